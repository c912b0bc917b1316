# aws.us_east_1: what CloudFront needs from us-east-1 (its web ACL, and the
# key of that ACL's logs); the environments pass it in.
terraform {
  # 1.9: a variable's validation may name another variable (vote_tables_prefix).
  required_version = ">= 1.9"
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
