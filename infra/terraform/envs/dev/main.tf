# The dev environment: sizes and identity settings only; everything else is
# ../../modules/tally.

terraform {
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
  # Keep the state in S3 with locking, e.g.:
  # backend "s3" { bucket = "<state bucket>" key = "tally/dev.tfstate" region = "<region>" use_lockfile = true }
}

provider "aws" {
  region = var.region
}

# CloudFront's web ACL (and the key of its logs) must be in us-east-1.
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "image" {
  type = string
}

variable "vpc_id" {
  type = string
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "public_subnet_ids" {
  type = list(string)
}

variable "certificate_arn" {
  type = string
}

variable "cdn_aliases" {
  description = "Public names of the CloudFront distribution (vote.example.com); certificate_arn must cover them too."
  type        = list(string)
}

variable "cdn_certificate_arn" {
  description = "ACM certificate of cdn_aliases, in us-east-1."
  type        = string
}

variable "alarm_email" {
  type    = string
  default = ""
}

variable "ses_identity_arn" {
  description = "Verified SES identity the voters' email is sent from."
  type        = string
}

variable "voter_registration" {
  description = "\"self\", \"preregistered\" or \"oidc\" (see modules/tally/identity.tf)."
  type        = string
  default     = "self"
}

# Small: 4 shards, 1 to 4 workers, one gateway, deletable tables.
module "tally" {
  source = "../../modules/tally"
  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }
  app                 = "tally-dev"
  region              = var.region
  image               = var.image
  vpc_id              = var.vpc_id
  private_subnet_ids  = var.private_subnet_ids
  public_subnet_ids   = var.public_subnet_ids
  certificate_arn     = var.certificate_arn
  cdn_aliases         = var.cdn_aliases
  cdn_certificate_arn = var.cdn_certificate_arn
  alarm_email         = var.alarm_email
  ses_identity_arn    = var.ses_identity_arn
  voter_registration  = var.voter_registration
  shard_count         = 4
  workers_min         = 1
  workers_max         = 4
  shards_per_worker   = 4
  gateways_min        = 1
  gateways_max        = 2
  worker_cpu          = 512
  worker_memory       = 1024
  gateway_cpu         = 512
  gateway_memory      = 1024
  api_rate_limit      = 500
  api_burst_limit     = 1000
  deletion_protection = false
  tags                = { application = "tally", environment = "dev" }
}

output "gateway_url" {
  value = module.tally.gateway_url
}

output "vote_api_url" {
  value = module.tally.vote_api_url
}

output "cdn_domain_name" {
  description = "Point cdn_aliases here (CNAME, or a Route 53 alias record)."
  value       = module.tally.cdn_domain_name
}

output "one_off_run" {
  description = "Cluster, task definitions (finalizer, replay), security groups and subnets of one-off task runs (ops/runbooks)."
  value       = module.tally.one_off_run
}
