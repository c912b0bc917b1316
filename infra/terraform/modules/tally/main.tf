# Tally on AWS, whole: the key, the stream, the tables, the buckets, the
# worker and gateway services, API Gateway's vote path with its Cognito
# authorizer, WAF, the dashboard and the alarms. The voters' identity (the
# Cognito user pool, its sign-up paths and the voter claim) is in
# identity.tf. Environments (../../envs) only choose sizes.

data "aws_caller_identity" "current" {}

locals {
  table_prefix = "${var.app}-"
  account_id   = data.aws_caller_identity.current.account_id
}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:a key policy's resource is the key itself; administration stays with the account
  #checkov:skip=CKV_AWS_111:a key policy's resource is the key itself; services are limited by conditions
  #checkov:skip=CKV_AWS_356:a key policy's resource is the key itself ("*" means this key)
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # a key policy's resource is the key itself
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${local.account_id}:root"]
    }
  }
  statement {
    sid       = "LogsEncrypt"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"] # a key policy's resource is the key itself
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
  statement {
    sid       = "AlarmsPublish"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"] # a key policy's resource is the key itself
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    # Only this account's alarms (no confused deputy through another
    # account's alarm naming this key's topic).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:cloudwatch:${var.region}:${local.account_id}:alarm:*"]
    }
  }
}

resource "aws_kms_key" "tally" {
  description         = "${var.app}: stream, tables, logs, snapshots, alarms"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
  tags                = var.tags
}

resource "aws_kms_alias" "tally" {
  name          = "alias/${var.app}"
  target_key_id = aws_kms_key.tally.key_id
}

module "stream" {
  source      = "../stream"
  name        = "${var.app}-votes"
  shard_count = var.shard_count
  on_demand   = var.on_demand_stream
  kms_key_arn = aws_kms_key.tally.arn
  tags        = var.tags
}

module "tables" {
  source              = "../tables"
  app                 = var.app
  table_prefix        = local.table_prefix
  kms_key_arn         = aws_kms_key.tally.arn
  deletion_protection = var.deletion_protection
  tags                = var.tags
}

module "buckets" {
  source      = "../buckets"
  app         = var.app
  region      = var.region
  kms_key_arn = aws_kms_key.tally.arn
  tags        = var.tags
}

module "service" {
  source                             = "../service"
  app                                = var.app
  image                              = var.image
  region                             = var.region
  vpc_id                             = var.vpc_id
  private_subnet_ids                 = var.private_subnet_ids
  public_subnet_ids                  = var.public_subnet_ids
  certificate_arn                    = var.certificate_arn
  alb_logs_bucket                    = module.buckets.alb_logs_bucket
  stream_name                        = module.stream.name
  stream_arn                         = module.stream.arn
  table_prefix                       = local.table_prefix
  table_arns                         = module.tables.arns
  kms_key_arn                        = aws_kms_key.tally.arn
  snapshot_bucket                    = module.buckets.snapshot_bucket
  workers_min                        = var.workers_min
  workers_max                        = var.workers_max
  shards_per_worker                  = var.shards_per_worker
  gateway_count                      = var.gateway_count
  worker_cpu                         = var.worker_cpu
  worker_memory                      = var.worker_memory
  gateway_cpu                        = var.gateway_cpu
  gateway_memory                     = var.gateway_memory
  auth_jwks_url                      = "https://cognito-idp.${var.region}.amazonaws.com/${aws_cognito_user_pool.voters.id}/.well-known/jwks.json"
  auth_issuer                        = "https://cognito-idp.${var.region}.amazonaws.com/${aws_cognito_user_pool.voters.id}"
  auth_audience                      = aws_cognito_user_pool_client.web.id
  auth_admin_role                    = aws_cognito_user_group.admins.name
  auth_voter_claim                   = var.voter_claim
  cors_origins                       = var.cors_origins
  metrics_scraper_security_group_ids = var.metrics_scraper_security_group_ids
  tags                               = var.tags
}

module "api" {
  source        = "../api"
  app           = var.app
  region        = var.region
  stream_name   = module.stream.name
  stream_arn    = module.stream.arn
  kms_key_arn   = aws_kms_key.tally.arn
  user_pool_arn = aws_cognito_user_pool.voters.arn
  voter_claim   = var.voter_claim
  rate_limit    = var.api_rate_limit
  burst_limit   = var.api_burst_limit
  tags          = var.tags
}

module "waf" {
  source                     = "../waf"
  app                        = var.app
  associate_arns             = [module.api.stage_arn, module.service.alb_arn]
  rate_limit_per_5_min       = var.waf_rate_limit_per_5_min
  token_rate_limit_per_5_min = var.waf_token_rate_limit_per_5_min
  kms_key_arn                = aws_kms_key.tally.arn
  tags                       = var.tags
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.app}-alarms"
  kms_master_key_id = aws_kms_key.tally.arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

module "monitoring" {
  source          = "../monitoring"
  app             = var.app
  region          = var.region
  stream_name     = module.stream.name
  alarm_topic_arn = aws_sns_topic.alarms.arn
  tags            = var.tags
}
