# API Gateway (REST) in front of Kinesis for the vote write path: POST
# /v1/polls/{poll}/votes goes straight to PutRecord through a mapping
# template (vote-request.vm); a Cognito authorizer verifies the voter; a
# usage plan throttles; WAF filters (see ../waf). Reads and admin routes
# stay on the gateway service.

variable "app" {
  type = string
}

variable "region" {
  type = string
}

variable "stream_name" {
  type = string
}

variable "stream_arn" {
  type = string
}

variable "kms_key_arn" {
  type = string
}

variable "user_pool_arn" {
  description = "Cognito user pool whose tokens the authorizer accepts."
  type        = string
}

variable "voter_claim" {
  description = "The authorizer claim the voter id is taken from (the gateway's TALLY_AUTH_VOTER_CLAIM)."
  type        = string
  default     = "phone_number"
  validation {
    # It is put into the mapping template between quotes: no quotes, no $ or #.
    condition     = can(regex("^[A-Za-z0-9_:.-]{1,64}$", var.voter_claim))
    error_message = "voter_claim must be 1 to 64 of [A-Za-z0-9_:.-]."
  }
}

variable "rate_limit" {
  description = "Usage plan: steady requests per second across the API."
  type        = number
  default     = 10000
}

variable "burst_limit" {
  type    = number
  default = 20000
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
  # The claim that says the voter claim is verified: a phone number or an
  # email address counts only when Cognito verified it (the gateway applies
  # the same rule). Other claims (sub, a custom attribute) have none.
  verified_claim = contains(["phone_number", "email"], var.voter_claim) ? "${var.voter_claim}_verified" : ""
  # vote-request.vm with its two placeholders filled in.
  vote_request_template = replace(replace(file("${path.module}/vote-request.vm"), "__VOTER_CLAIM__", var.voter_claim), "__VERIFIED_CLAIM__", local.verified_claim)
}

resource "aws_api_gateway_rest_api" "votes" {
  name        = "${var.app}-votes"
  description = "Tally vote write path: POST /v1/polls/{poll}/votes into Kinesis"
  endpoint_configuration {
    types = ["REGIONAL"]
  }
  lifecycle {
    create_before_destroy = true
  }
  tags = var.tags
}

resource "aws_api_gateway_authorizer" "cognito" {
  name            = "cognito"
  rest_api_id     = aws_api_gateway_rest_api.votes.id
  type            = "COGNITO_USER_POOLS"
  provider_arns   = [var.user_pool_arn]
  identity_source = "method.request.header.Authorization"
}

resource "aws_api_gateway_resource" "v1" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  parent_id   = aws_api_gateway_rest_api.votes.root_resource_id
  path_part   = "v1"
}

resource "aws_api_gateway_resource" "polls" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  parent_id   = aws_api_gateway_resource.v1.id
  path_part   = "polls"
}

resource "aws_api_gateway_resource" "poll" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  parent_id   = aws_api_gateway_resource.polls.id
  path_part   = "{poll}"
}

resource "aws_api_gateway_resource" "votes" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  parent_id   = aws_api_gateway_resource.poll.id
  path_part   = "votes"
}

resource "aws_api_gateway_model" "vote" {
  rest_api_id  = aws_api_gateway_rest_api.votes.id
  name         = "Vote"
  content_type = "application/json"
  schema = jsonencode({
    "$schema"            = "http://json-schema.org/draft-04/schema#"
    type                 = "object"
    required             = ["option"]
    additionalProperties = false
    properties = {
      option = { type = "string", pattern = "^[A-Za-z0-9._:@-]{1,128}$" }
    }
  })
}

resource "aws_api_gateway_request_validator" "body_and_params" {
  rest_api_id                 = aws_api_gateway_rest_api.votes.id
  name                        = "body-and-params"
  validate_request_body       = true
  validate_request_parameters = true
}

resource "aws_api_gateway_method" "post_vote" {
  rest_api_id          = aws_api_gateway_rest_api.votes.id
  resource_id          = aws_api_gateway_resource.votes.id
  http_method          = "POST"
  authorization        = "COGNITO_USER_POOLS"
  authorizer_id        = aws_api_gateway_authorizer.cognito.id
  request_validator_id = aws_api_gateway_request_validator.body_and_params.id
  api_key_required     = false
  request_models = {
    "application/json" = aws_api_gateway_model.vote.name
  }
  request_parameters = {
    "method.request.path.poll" = true
  }
}

data "aws_iam_policy_document" "assume_apigateway" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "put_record" {
  name               = "${var.app}-apigateway-put-record"
  assume_role_policy = data.aws_iam_policy_document.assume_apigateway.json
  tags               = var.tags
}

data "aws_iam_policy_document" "put_record" {
  statement {
    actions   = ["kinesis:PutRecord"]
    resources = [var.stream_arn]
  }
  statement {
    actions   = ["kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "put_record" {
  name   = "put-votes"
  role   = aws_iam_role.put_record.id
  policy = data.aws_iam_policy_document.put_record.json
}

resource "aws_api_gateway_integration" "kinesis" {
  rest_api_id             = aws_api_gateway_rest_api.votes.id
  resource_id             = aws_api_gateway_resource.votes.id
  http_method             = aws_api_gateway_method.post_vote.http_method
  type                    = "AWS"
  integration_http_method = "POST"
  uri                     = "arn:aws:apigateway:${var.region}:kinesis:action/PutRecord"
  credentials             = aws_iam_role.put_record.arn
  passthrough_behavior    = "NEVER"
  request_parameters = {
    "integration.request.header.Content-Type" = "'application/x-amz-json-1.1'"
  }
  request_templates = {
    "application/json" = local.vote_request_template
  }
}

resource "aws_api_gateway_method_response" "accepted" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  resource_id = aws_api_gateway_resource.votes.id
  http_method = aws_api_gateway_method.post_vote.http_method
  status_code = "202"
}

resource "aws_api_gateway_method_response" "unavailable" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  resource_id = aws_api_gateway_resource.votes.id
  http_method = aws_api_gateway_method.post_vote.http_method
  status_code = "503"
}

resource "aws_api_gateway_integration_response" "accepted" {
  rest_api_id       = aws_api_gateway_rest_api.votes.id
  resource_id       = aws_api_gateway_resource.votes.id
  http_method       = aws_api_gateway_method.post_vote.http_method
  status_code       = aws_api_gateway_method_response.accepted.status_code
  selection_pattern = "200"
  response_templates = {
    "application/json" = "{\"vote_id\":\"$context.requestId\",\"poll_id\":\"$util.escapeJavaScript($input.params('poll'))\",\"status\":\"accepted\"}"
  }
  depends_on = [aws_api_gateway_integration.kinesis]
}

resource "aws_api_gateway_integration_response" "unavailable" {
  rest_api_id       = aws_api_gateway_rest_api.votes.id
  resource_id       = aws_api_gateway_resource.votes.id
  http_method       = aws_api_gateway_method.post_vote.http_method
  status_code       = aws_api_gateway_method_response.unavailable.status_code
  selection_pattern = "(4|5)\\d{2}"
  response_templates = {
    "application/json" = "{\"error\":{\"code\":\"unavailable\",\"message\":\"the vote could not be put on the stream; retry\"}}"
  }
  depends_on = [aws_api_gateway_integration.kinesis]
}

resource "aws_api_gateway_deployment" "votes" {
  rest_api_id = aws_api_gateway_rest_api.votes.id
  triggers = {
    redeployment = sha1(jsonencode([
      aws_api_gateway_method.post_vote,
      aws_api_gateway_integration.kinesis,
      aws_api_gateway_integration_response.accepted,
      aws_api_gateway_integration_response.unavailable,
    ]))
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "access" {
  name              = "/tally/${var.app}/apigateway"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_api_gateway_stage" "v1" {
  #checkov:skip=CKV_AWS_120:votes must never be answered from a cache
  #checkov:skip=CKV2_AWS_51:a public voting API; clients authenticate with Cognito tokens, not TLS client certificates
  #checkov:skip=CKV2_AWS_29:the web ACL is associated in modules/waf, called by modules/tally with this stage's ARN
  rest_api_id          = aws_api_gateway_rest_api.votes.id
  deployment_id        = aws_api_gateway_deployment.votes.id
  stage_name           = "live"
  xray_tracing_enabled = true
  variables = {
    stream = var.stream_name
  }
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId = "$context.requestId", ip = "$context.identity.sourceIp", voter = "$context.authorizer.claims.sub",
      status    = "$context.status", latency = "$context.responseLatency", error = "$context.integrationErrorMessage"
    })
  }
  tags = var.tags
}

resource "aws_api_gateway_method_settings" "all" {
  #checkov:skip=CKV_AWS_225:votes must never be answered from a cache
  rest_api_id = aws_api_gateway_rest_api.votes.id
  stage_name  = aws_api_gateway_stage.v1.stage_name
  method_path = "*/*"
  settings {
    metrics_enabled        = true
    logging_level          = "ERROR"
    throttling_rate_limit  = var.rate_limit
    throttling_burst_limit = var.burst_limit
  }
}

resource "aws_api_gateway_usage_plan" "voters" {
  name = "${var.app}-voters"
  api_stages {
    api_id = aws_api_gateway_rest_api.votes.id
    stage  = aws_api_gateway_stage.v1.stage_name
  }
  throttle_settings {
    rate_limit  = var.rate_limit
    burst_limit = var.burst_limit
  }
  tags = var.tags
}

output "stage_arn" {
  value = aws_api_gateway_stage.v1.arn
}

output "invoke_url" {
  value = aws_api_gateway_stage.v1.invoke_url
}

output "rest_api_name" {
  value = aws_api_gateway_rest_api.votes.name
}
