# Tally on AWS, whole: the key, the stream, the tables, the buckets, the
# worker and gateway services, the CloudFront distribution in front of the
# gateway, API Gateway's vote path with its Cognito authorizer, WAF, the
# dashboard and the alarms. The voters' identity (the Cognito user pool,
# its sign-up paths and the voter claim) is in identity.tf. Environments
# (../../envs) only choose sizes.

data "aws_caller_identity" "current" {}

locals {
  # The names of the tables this module makes (modules/tables): fixed by
  # the app's name, so that no input can replace a protected table.
  table_prefix = "${var.app}-"
  account_id   = data.aws_caller_identity.current.account_id
  table_arn    = "arn:aws:dynamodb:${var.region}:${local.account_id}:table"
  # The vote tables the tasks use: this module's, or restored ones
  # (var.vote_tables_prefix, ops/runbooks/restore.md). The lease table
  # stays this module's.
  service_table_prefix = var.vote_tables_prefix == "" ? local.table_prefix : var.vote_tables_prefix
  service_table_arns = var.vote_tables_prefix == "" ? module.tables.arns : merge(module.tables.arns, {
    for role in ["polls", "votes", "tallies", "rejects"] : role => "${local.table_arn}/${var.vote_tables_prefix}${role}"
  })
  # What `tally replay` may create and write: its shadow tables and lease
  # table (<app>-replay-*), and restored tables (<app>-restored-*), into
  # which restore.md replays the stream. No live table is named so.
  replay_table_arns = ["${local.table_arn}/${var.app}-replay-*", "${local.table_arn}/${var.app}-restored-*"]
}

# What every key of the application allows, per region: the account
# administers it, and that region's CloudWatch Logs encrypts with it (the
# main key in var.region; the edge key in us-east-1, for CloudFront's WAF
# logs).
data "aws_iam_policy_document" "logs_key" {
  #checkov:skip=CKV_AWS_109:a key policy's resource is the key itself; administration stays with the account
  #checkov:skip=CKV_AWS_111:a key policy's resource is the key itself; services are limited by conditions
  #checkov:skip=CKV_AWS_356:a key policy's resource is the key itself ("*" means this key)
  for_each = toset([var.region, "us-east-1"])
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
      identifiers = ["logs.${each.value}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${each.value}:${local.account_id}:log-group:*"]
    }
  }
}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:a key policy's resource is the key itself; administration stays with the account
  #checkov:skip=CKV_AWS_111:a key policy's resource is the key itself; services are limited by conditions
  #checkov:skip=CKV_AWS_356:a key policy's resource is the key itself ("*" means this key)
  source_policy_documents = [data.aws_iam_policy_document.logs_key[var.region].json]
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

# CloudFront's web ACL lives in us-east-1, and so does its log group, whose
# key must be in the same region: a second key, for those logs only.
resource "aws_kms_key" "edge" {
  provider            = aws.us_east_1
  description         = "${var.app}: CloudFront's WAF logs (us-east-1)"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.logs_key["us-east-1"].json
  tags                = var.tags
}

# The header value by which the load balancer knows the distribution's
# requests (modules/service). It is in the state and in the distribution's
# configuration; replace it (terraform apply -replace) if either leaks.
resource "random_password" "origin_secret" {
  length  = 48
  special = false
}

locals {
  origin_header_name = "X-Tally-Origin-Verify"
  # What the distribution serves from its cache (modules/cdn): the pages,
  # their assets and the results. The edge web ACL limits these per
  # address on their own (modules/waf).
  cached_paths_regex = "^/(v1/polls/[^/]+/results|vote|dashboard|admin|assets/.+|openapi\\.json)?$"
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
  origin_header_name                 = local.origin_header_name
  origin_secret                      = random_password.origin_secret.result
  alb_logs_bucket                    = module.buckets.alb_logs_bucket
  stream_name                        = module.stream.name
  stream_arn                         = module.stream.arn
  table_prefix                       = local.service_table_prefix
  table_arns                         = local.service_table_arns
  replay_table_arns                  = local.replay_table_arns
  kms_key_arn                        = aws_kms_key.tally.arn
  snapshot_bucket                    = module.buckets.snapshot_bucket
  workers_min                        = var.workers_min
  workers_max                        = var.workers_max
  shards_per_worker                  = var.shards_per_worker
  gateways_min                       = var.gateways_min
  gateways_max                       = var.gateways_max
  gateway_cpu_target                 = var.gateway_cpu_target
  gateway_requests_per_target        = var.gateway_requests_per_target
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

# API Gateway's stage. The load balancer is not associated: it admits the
# distribution only, and a regional ACL there would see CloudFront's
# addresses instead of the viewers' (one edge server would look like one
# client to the per-address rule).
module "waf" {
  source                     = "../waf"
  app                        = var.app
  associate_arns             = [module.api.stage_arn]
  rate_limit_per_5_min       = var.waf_rate_limit_per_5_min
  token_rate_limit_per_5_min = var.waf_token_rate_limit_per_5_min
  kms_key_arn                = aws_kms_key.tally.arn
  tags                       = var.tags
}

# The distribution's: the same rules, in us-east-1, with the cached paths
# limited apart (see modules/waf).
module "waf_edge" {
  source = "../waf"
  providers = {
    aws = aws.us_east_1
  }
  app                               = "${var.app}-edge"
  scope                             = "CLOUDFRONT"
  rate_limit_per_5_min              = var.waf_rate_limit_per_5_min
  token_rate_limit_per_5_min        = var.waf_token_rate_limit_per_5_min
  cached_paths_regex                = local.cached_paths_regex
  cached_paths_rate_limit_per_5_min = var.waf_cached_paths_rate_limit_per_5_min
  kms_key_arn                       = aws_kms_key.edge.arn
  tags                              = var.tags
}

module "cdn" {
  source                 = "../cdn"
  app                    = var.app
  aliases                = var.cdn_aliases
  certificate_arn        = var.cdn_certificate_arn
  origin_domain_name     = module.service.alb_dns_name
  origin_shield_region   = var.region
  origin_header_name     = local.origin_header_name
  origin_secret          = random_password.origin_secret.result
  web_acl_arn            = module.waf_edge.web_acl_arn
  log_bucket_domain_name = module.buckets.cdn_logs_bucket_domain_name
  price_class            = var.cdn_price_class
  allowed_countries      = var.cdn_allowed_countries
  cors_origins           = var.cors_origins
  tags                   = var.tags
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
