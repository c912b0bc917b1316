# The voters' identity: one Cognito user pool whose voter id is a verified
# phone number, so that one person has one voter id however many accounts
# they open, delete or reopen.
#
# - Sign-in name and voter claim: `phone_number` (E.164), verified by an SMS
#   code before the account can sign in; a voter cannot change it through
#   the app client, and a changed number takes effect only once it is
#   verified (unless an operator marks it verified).
# - How voters get an account (var.voter_registration):
#   - "self": self sign-up, refused by the pre-sign-up check
#     (pre_sign_up.py) when the number is not in E.164 form or another
#     account already holds it;
#   - "preregistered": no self sign-up; the operator imports the voter list
#     (AdminCreateUser or a user import job);
#   - "oidc": no self sign-up; voters sign in through an external OpenID
#     Connect provider (for example a national identity service) whose
#     verified phone claim is mapped to phone_number.
# - Messages: SMS through SNS with this pool's own role, email through SES
#   (var.ses_identity_arn), never Cognito's default sender.
# - Both vote paths read the voter id from the same claim, var.voter_claim:
#   the gateway as TALLY_AUTH_VOTER_CLAIM, API Gateway's mapping template
#   (../api/vote-request.vm) through its placeholder.

locals {
  self_signup = var.voter_registration == "self"
  oidc        = var.voter_registration == "oidc"

  # The external id Cognito presents when it assumes the SMS role.
  sms_external_id = "${var.app}-voters-sms"

  # What the app client may read into tokens: the voter claim and its
  # verification flag among them.
  voter_read_attributes = ["phone_number", "phone_number_verified", "email", "email_verified", "name", "locale"]
  # What a voter may change about themselves: never the phone number, which
  # is their voter id.
  voter_write_attributes = ["name", "locale"]
  # Cognito writes an identity provider's mapped attributes through the app
  # client at every federated sign-in, so in "oidc" mode they must be
  # writable by the client. The voter still cannot write them: that client
  # has no password sign-in and its tokens carry no
  # aws.cognito.signin.user.admin scope, which UpdateUserAttributes needs.
  federated_write_attributes = ["phone_number", "phone_number_verified"]
}

data "aws_iam_policy_document" "cognito_sms_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["cognito-idp.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [local.sms_external_id]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:cognito-idp:${var.region}:${local.account_id}:userpool/*"]
    }
  }
}

resource "aws_iam_role" "cognito_sms" {
  name               = "${var.app}-voters-sms"
  assume_role_policy = data.aws_iam_policy_document.cognito_sms_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "cognito_sms" {
  #checkov:skip=CKV_AWS_111:an SMS to a phone number has no resource ARN; topics are denied below
  statement {
    sid       = "SendSms"
    actions   = ["sns:Publish"]
    resources = ["*"] # SMS to a phone number: there is no ARN to name
  }
  statement {
    sid       = "NoTopics"
    effect    = "Deny"
    actions   = ["sns:Publish"]
    resources = ["arn:aws:sns:*:*:*"]
  }
}

resource "aws_iam_role_policy" "cognito_sms" {
  name   = "send-sms"
  role   = aws_iam_role.cognito_sms.id
  policy = data.aws_iam_policy_document.cognito_sms.json
}

# SES lets Cognito send from the identity only with this sending
# authorization, which must exist before the pool (Cognito checks it then);
# hence the pool ARN pattern rather than the pool's own ARN. The identity
# must be in this account and region.
data "aws_iam_policy_document" "cognito_email" {
  statement {
    actions   = ["ses:SendEmail", "ses:SendRawEmail"]
    resources = [var.ses_identity_arn]
    principals {
      type        = "Service"
      identifiers = ["cognito-idp.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:cognito-idp:${var.region}:${local.account_id}:userpool/*"]
    }
  }
}

resource "aws_ses_identity_policy" "cognito_email" {
  identity = var.ses_identity_arn
  name     = "${var.app}-cognito-voters"
  policy   = data.aws_iam_policy_document.cognito_email.json
}

resource "aws_cognito_user_pool" "voters" {
  name                     = "${var.app}-voters"
  username_attributes      = ["phone_number"]
  auto_verified_attributes = ["phone_number"]
  deletion_protection      = var.deletion_protection ? "ACTIVE" : "INACTIVE"
  mfa_configuration        = "OPTIONAL"
  software_token_mfa_configuration {
    enabled = true
  }
  password_policy {
    minimum_length = 12
  }

  # A changed number is only used once the new number is verified.
  user_attribute_update_settings {
    attributes_require_verification_before_update = ["phone_number"]
  }

  # Self sign-up only in "self" mode, and then only through the check below.
  admin_create_user_config {
    allow_admin_create_user_only = !local.self_signup
  }
  dynamic "lambda_config" {
    for_each = local.self_signup ? [1] : []
    content {
      pre_sign_up = aws_lambda_function.pre_sign_up[0].arn
    }
  }

  account_recovery_setting {
    recovery_mechanism {
      name     = "verified_phone_number"
      priority = 1
    }
  }

  sms_configuration {
    external_id    = local.sms_external_id
    sns_caller_arn = aws_iam_role.cognito_sms.arn
    sns_region     = var.region
  }

  # SES, not Cognito's default sender (capped at 50 messages a day).
  email_configuration {
    email_sending_account = "DEVELOPER"
    source_arn            = var.ses_identity_arn
    from_email_address    = var.email_from == "" ? null : var.email_from
  }

  depends_on = [aws_iam_role_policy.cognito_sms, aws_ses_identity_policy.cognito_email]
  tags       = var.tags
}

resource "aws_cognito_user_pool_client" "web" {
  name                          = "${var.app}-web"
  user_pool_id                  = aws_cognito_user_pool.voters.id
  generate_secret               = false
  prevent_user_existence_errors = "ENABLED"
  enable_token_revocation       = true
  read_attributes               = local.voter_read_attributes
  write_attributes              = local.oidc ? concat(local.voter_write_attributes, local.federated_write_attributes) : local.voter_write_attributes

  # Pool users sign in with SRP; federated voters only through the provider.
  explicit_auth_flows          = local.oidc ? ["ALLOW_REFRESH_TOKEN_AUTH"] : ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
  supported_identity_providers = local.oidc ? [aws_cognito_identity_provider.oidc[0].provider_name] : ["COGNITO"]

  # OAuth (the provider's sign-in) only in "oidc" mode, and never with the
  # aws.cognito.signin.user.admin scope: its tokens cannot update or delete
  # the user.
  allowed_oauth_flows_user_pool_client = local.oidc
  allowed_oauth_flows                  = local.oidc ? ["code"] : []
  allowed_oauth_scopes                 = local.oidc ? ["openid", "phone"] : []
  callback_urls                        = local.oidc ? var.oauth_callback_urls : []
  logout_urls                          = local.oidc ? var.oauth_logout_urls : []
}

resource "aws_cognito_user_group" "admins" {
  name         = "admins"
  user_pool_id = aws_cognito_user_pool.voters.id
  description  = "May create, open and close polls (TALLY_AUTH_ADMIN_ROLE)"
}

# "oidc": the external provider, its sign-in domain, and its claims.

data "aws_secretsmanager_secret_version" "oidc_client_secret" {
  count     = local.oidc ? 1 : 0
  secret_id = var.oidc_client_secret_arn
}

resource "aws_cognito_identity_provider" "oidc" {
  count         = local.oidc ? 1 : 0
  user_pool_id  = aws_cognito_user_pool.voters.id
  provider_name = var.oidc_provider_name
  provider_type = "OIDC"
  provider_details = {
    oidc_issuer               = var.oidc_issuer
    client_id                 = var.oidc_client_id
    client_secret             = data.aws_secretsmanager_secret_version.oidc_client_secret[0].secret_string
    authorize_scopes          = var.oidc_scopes
    attributes_request_method = "GET"
  }
  # The provider's verified phone number becomes the voter's phone_number,
  # and its verification flag phone_number_verified (both vote paths
  # require it to be true when the voter claim is phone_number).
  attribute_mapping = {
    username              = "sub"
    phone_number          = var.oidc_phone_claim
    phone_number_verified = var.oidc_phone_verified_claim
  }
  lifecycle {
    precondition {
      condition     = var.oidc_issuer != "" && var.oidc_client_id != "" && var.oidc_client_secret_arn != "" && var.auth_domain_prefix != "" && length(var.oauth_callback_urls) > 0
      error_message = "voter_registration = \"oidc\" needs oidc_issuer, oidc_client_id, oidc_client_secret_arn, auth_domain_prefix and oauth_callback_urls."
    }
  }
}

resource "aws_cognito_user_pool_domain" "voters" {
  count        = local.oidc ? 1 : 0
  domain       = var.auth_domain_prefix
  user_pool_id = aws_cognito_user_pool.voters.id
}

# "self": the pre-sign-up check, a small function in this directory.

data "archive_file" "pre_sign_up" {
  count       = local.self_signup ? 1 : 0
  type        = "zip"
  source_file = "${path.module}/pre_sign_up.py"
  output_path = "${path.module}/.build/pre_sign_up.zip"
}

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "pre_sign_up" {
  count              = local.self_signup ? 1 : 0
  name               = "${var.app}-pre-sign-up"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "pre_sign_up" {
  count             = local.self_signup ? 1 : 0
  name              = "/aws/lambda/${var.app}-pre-sign-up"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.tally.arn
  tags              = var.tags
}

data "aws_iam_policy_document" "pre_sign_up" {
  count = local.self_signup ? 1 : 0
  statement {
    sid       = "FindHolders"
    actions   = ["cognito-idp:ListUsers"]
    resources = [aws_cognito_user_pool.voters.arn]
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.pre_sign_up[0].arn}:*"]
  }
  statement {
    sid       = "Traces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray's trace APIs have no resource-level permissions.
  }
}

resource "aws_iam_role_policy" "pre_sign_up" {
  count  = local.self_signup ? 1 : 0
  name   = "check-sign-up"
  role   = aws_iam_role.pre_sign_up[0].id
  policy = data.aws_iam_policy_document.pre_sign_up[0].json
}

resource "aws_lambda_function" "pre_sign_up" {
  #checkov:skip=CKV_AWS_116:Cognito calls this trigger synchronously and shows its refusal to the voter; there is no asynchronous event to keep
  #checkov:skip=CKV_AWS_117:it only calls the Cognito API and serves nothing on a network; outside a VPC it needs no NAT route or endpoint
  #checkov:skip=CKV_AWS_272:the code is this module's own reviewed file, packaged by Terraform at apply; there is no signing profile to check it against
  count            = local.self_signup ? 1 : 0
  function_name    = "${var.app}-pre-sign-up"
  description      = "Refuses a voter sign-up whose phone number is not E.164 or already has an account"
  role             = aws_iam_role.pre_sign_up[0].arn
  runtime          = "python3.12"
  handler          = "pre_sign_up.handler"
  filename         = data.archive_file.pre_sign_up[0].output_path
  source_code_hash = data.archive_file.pre_sign_up[0].output_base64sha256
  # Cognito waits 5 s for a trigger.
  timeout     = 5
  memory_size = 128
  # Sign-ups are bounded by Cognito's ListUsers request rate anyway; this
  # keeps a sign-up storm from taking the account's whole Lambda concurrency.
  reserved_concurrent_executions = var.pre_sign_up_concurrency
  tracing_config {
    mode = "Active"
  }
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.pre_sign_up[0].name
  }
  # No depends_on the role's policy: that policy names the pool, and the
  # pool names this function, so waiting for it would be a cycle. The
  # policy is in place long before the first sign-up invokes the function.
  tags = var.tags
}

resource "aws_lambda_permission" "pre_sign_up" {
  count         = local.self_signup ? 1 : 0
  statement_id  = "CognitoPreSignUp"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.pre_sign_up[0].function_name
  principal     = "cognito-idp.amazonaws.com"
  source_arn    = aws_cognito_user_pool.voters.arn
}
