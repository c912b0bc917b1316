# aws.us_east_1: what CloudFront needs from us-east-1 (its web ACL, and the
# key of that ACL's logs); the environments pass it in.
terraform {
  required_providers {
    aws = {
      source                = "hashicorp/aws"
      configuration_aliases = [aws.us_east_1]
    }
    archive = {
      source = "hashicorp/archive"
    }
    random = {
      source = "hashicorp/random"
    }
  }
}
