# A web ACL: a per-address rate rule, a per-token rate rule, and AWS
# managed rule groups (common exploits, known bad inputs including Log4j,
# IP reputation, bots), logged. modules/tally makes two: a REGIONAL one on
# API Gateway's stage, and a CLOUDFRONT one (made in us-east-1, as
# CloudFront requires) on the distribution in front of the gateway.

variable "app" {
  type = string
}

variable "rate_limit_per_5_min" {
  description = "Requests one address may send in 5 minutes before it is blocked."
  type        = number
  default     = 2000
}

# One voter votes a handful of times a minute and reads a little more with
# their token (their vote's status, the polls; results are public and need
# none): 300 requests in 5 minutes, one a second on average, leaves a real
# client far below the limit. A Kinesis shard takes
# 1,000 records/s, 300,000 in 5 minutes: a token at this limit uses a
# thousandth of one shard, however many addresses it is sent from.
variable "token_rate_limit_per_5_min" {
  description = "Requests one Authorization header value (one token) may send in 5 minutes, from any addresses, before it is blocked."
  type        = number
  default     = 300
  validation {
    condition     = var.token_rate_limit_per_5_min >= 10
    error_message = "WAF rate-based rules take limits of 10 and up."
  }
}

variable "scope" {
  description = "REGIONAL (API Gateway, load balancers) or CLOUDFRONT (distributions name the ACL themselves; the provider must be in us-east-1)."
  type        = string
  default     = "REGIONAL"
  validation {
    condition     = contains(["REGIONAL", "CLOUDFRONT"], var.scope)
    error_message = "scope must be REGIONAL or CLOUDFRONT."
  }
}

variable "associate_arns" {
  description = "REGIONAL: the API Gateway stages and load balancers to protect (CLOUDFRONT: none)."
  type        = list(string)
  default     = []
}

# Behind a CDN, a page or a results answer is served from the cache to
# everyone: it costs the origin nothing, and a viewer polling the results
# once a second would use the per-token budget (300 in 5 minutes) by
# itself, and many viewers behind one address (a mobile carrier's NAT) the
# per-address one. Requests whose path matches are left out of both rules
# and of bot control (billed per request inspected), and are limited per
# address by a rule of their own, far higher. Empty: no such paths.
variable "cached_paths_regex" {
  description = "Regex of the URI paths a CDN serves from its cache (pages, results), or empty."
  type        = string
  default     = ""
}

variable "cached_paths_rate_limit_per_5_min" {
  description = "Requests for cached paths one address may send in 5 minutes before it is blocked (with cached_paths_regex)."
  type        = number
  default     = 30000
  validation {
    condition     = var.cached_paths_rate_limit_per_5_min >= 10
    error_message = "WAF rate-based rules take limits of 10 and up."
  }
}

variable "kms_key_arn" {
  type = string
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "tags" {
  type    = map(string)
  default = {}
}

locals {
  exempt_cached = var.cached_paths_regex != ""
  managed_groups = [
    { name = "AWSManagedRulesCommonRuleSet", priority = 10 },
    { name = "AWSManagedRulesKnownBadInputsRuleSet", priority = 20 },
    { name = "AWSManagedRulesAmazonIpReputationList", priority = 30 },
    { name = "AWSManagedRulesBotControlRuleSet", priority = 40 },
  ]
}

resource "aws_wafv2_web_acl" "this" {
  name  = "${var.app}-web"
  scope = var.scope

  default_action {
    allow {}
  }

  rule {
    name     = "rate-per-address"
    priority = 1
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit              = var.rate_limit_per_5_min
        aggregate_key_type = "IP"
        dynamic "scope_down_statement" {
          for_each = local.exempt_cached ? [1] : []
          content {
            not_statement {
              statement {
                regex_match_statement {
                  regex_string = var.cached_paths_regex
                  field_to_match {
                    uri_path {}
                  }
                  text_transformation {
                    priority = 0
                    type     = "NONE"
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.app}-rate-per-address"
      sampled_requests_enabled   = true
    }
  }

  # Per token: the key is the whole Authorization header, so one token used
  # from many addresses (which the per-address rule cannot see) is blocked
  # before it can hold a shard; the workers' dedupe would discard its votes,
  # but not before they took the shard's write capacity. Requests without
  # the header are left to the per-address rule.
  rule {
    name     = "rate-per-token"
    priority = 2
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit              = var.token_rate_limit_per_5_min
        aggregate_key_type = "CUSTOM_KEYS"
        custom_key {
          header {
            name = "authorization"
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
        dynamic "scope_down_statement" {
          for_each = local.exempt_cached ? [1] : []
          content {
            not_statement {
              statement {
                regex_match_statement {
                  regex_string = var.cached_paths_regex
                  field_to_match {
                    uri_path {}
                  }
                  text_transformation {
                    priority = 0
                    type     = "NONE"
                  }
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.app}-rate-per-token"
      sampled_requests_enabled   = true
    }
  }

  # The cached paths, per address, with a limit of their own.
  dynamic "rule" {
    for_each = local.exempt_cached ? [1] : []
    content {
      name     = "rate-per-address-cached"
      priority = 3
      action {
        block {}
      }
      statement {
        rate_based_statement {
          limit              = var.cached_paths_rate_limit_per_5_min
          aggregate_key_type = "IP"
          scope_down_statement {
            regex_match_statement {
              regex_string = var.cached_paths_regex
              field_to_match {
                uri_path {}
              }
              text_transformation {
                priority = 0
                type     = "NONE"
              }
            }
          }
        }
      }
      visibility_config {
        cloudwatch_metrics_enabled = true
        metric_name                = "${var.app}-rate-per-address-cached"
        sampled_requests_enabled   = true
      }
    }
  }

  dynamic "rule" {
    for_each = local.managed_groups
    content {
      name     = rule.value.name
      priority = rule.value.priority
      override_action {
        none {}
      }
      statement {
        managed_rule_group_statement {
          vendor_name = "AWS"
          name        = rule.value.name
          # Bot control is billed per request it inspects: not the cached
          # paths, which every viewer polls.
          dynamic "scope_down_statement" {
            for_each = local.exempt_cached && rule.value.name == "AWSManagedRulesBotControlRuleSet" ? [1] : []
            content {
              not_statement {
                statement {
                  regex_match_statement {
                    regex_string = var.cached_paths_regex
                    field_to_match {
                      uri_path {}
                    }
                    text_transformation {
                      priority = 0
                      type     = "NONE"
                    }
                  }
                }
              }
            }
          }
        }
      }
      visibility_config {
        cloudwatch_metrics_enabled = true
        metric_name                = "${var.app}-${rule.value.name}"
        sampled_requests_enabled   = true
      }
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.app}-web"
    sampled_requests_enabled   = true
  }
  tags = var.tags
}

resource "aws_wafv2_web_acl_association" "this" {
  count        = length(var.associate_arns)
  resource_arn = var.associate_arns[count.index]
  web_acl_arn  = aws_wafv2_web_acl.this.arn
}

resource "aws_cloudwatch_log_group" "waf" {
  # WAF requires this name prefix.
  name              = "aws-waf-logs-${var.app}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  resource_arn            = aws_wafv2_web_acl.this.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]
  # Tokens are credentials (and an ID token carries the voter's number):
  # never in the logs.
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
}

output "web_acl_arn" {
  value = aws_wafv2_web_acl.this.arn
}
