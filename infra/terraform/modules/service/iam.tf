# One role per task, scoped to the exact resources it touches.

data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

locals {
  table_and_index_arns = flatten([for arn in values(var.table_arns) : [arn, "${arn}/index/*"]])
  vote_table_arns = flatten([
    for role, arn in var.table_arns : [arn, "${arn}/index/*"] if role != "leases"
  ])
}

# Pulling the image and writing logs.
resource "aws_iam_role" "execution" {
  name               = "${var.app}-task-execution"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "PullImage"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions.
  }
  statement {
    sid       = "PullLayers"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = ["arn:aws:ecr:${var.region}:${data.aws_caller_identity.current.account_id}:repository/*"]
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker.arn}:*", "${aws_cloudwatch_log_group.gateway.arn}:*"]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-and-log"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

data "aws_caller_identity" "current" {}

# The worker: reads the stream, owns leases, writes votes, tallies, rejects.
resource "aws_iam_role" "worker" {
  name               = "${var.app}-worker"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ReadStream"
    actions   = ["kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [var.stream_arn]
  }
  statement {
    sid       = "Tables"
    actions   = ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:TransactWriteItems", "dynamodb:ConditionCheckItem"]
    resources = local.table_and_index_arns
  }
  statement {
    sid       = "Decrypt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
  statement {
    sid       = "Metrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace is pinned below.
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "count-votes"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

# The gateway: puts votes, reads polls, votes, tallies and rejects, writes polls.
resource "aws_iam_role" "gateway" {
  name               = "${var.app}-gateway"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "gateway" {
  statement {
    sid       = "PutVotes"
    actions   = ["kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:PutRecords", "kinesis:PutRecord"]
    resources = [var.stream_arn]
  }
  statement {
    sid       = "ReadTables"
    actions   = ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem"]
    resources = local.vote_table_arns
  }
  statement {
    sid       = "ManagePolls"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [var.table_arns["polls"]]
  }
  statement {
    sid       = "Encrypt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
  statement {
    sid       = "Metrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace is pinned below.
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }
}

resource "aws_iam_role_policy" "gateway" {
  name   = "serve-votes"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.gateway.json
}

# The finalizer (`tally finalize`, a scheduled or one-off task): reads the
# stream positions and the lease table, scans votes, finalizes polls and
# writes final results to the snapshot bucket.
resource "aws_iam_role" "finalizer" {
  name               = "${var.app}-finalizer"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "finalizer" {
  statement {
    sid       = "StreamPositions"
    actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [var.stream_arn]
  }
  statement {
    sid       = "Tables"
    actions   = ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem"]
    resources = local.table_and_index_arns
  }
  statement {
    sid       = "Finalize"
    actions   = ["dynamodb:UpdateItem", "dynamodb:PutItem"]
    resources = [var.table_arns["polls"], var.table_arns["tallies"]]
  }
  statement {
    sid       = "Decrypt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
  dynamic "statement" {
    for_each = var.snapshot_bucket == "" ? [] : [var.snapshot_bucket]
    content {
      sid       = "Publish"
      actions   = ["s3:PutObject"]
      resources = ["arn:aws:s3:::${statement.value}/*"]
    }
  }
}

resource "aws_iam_role_policy" "finalizer" {
  name   = "finalize-polls"
  role   = aws_iam_role.finalizer.id
  policy = data.aws_iam_policy_document.finalizer.json
}
