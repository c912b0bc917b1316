# CLOUDFRONT scope: modules/tally passes a provider in us-east-1.
terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}
