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
  leases_arns          = [var.table_arns["leases"], "${var.table_arns["leases"]}/index/*"]
  table_and_index_arns = flatten([for arn in values(var.table_arns) : [arn, "${arn}/index/*"]])
  # The image's one ECR repository: <account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest].
  image_parts        = regex("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com/([^:@]+)", var.image)
  ecr_repository_arn = "arn:aws:ecr:${local.image_parts[1]}:${local.image_parts[0]}:repository/${local.image_parts[2]}"
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
    resources = [local.ecr_repository_arn] # the image's repository only
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

# The worker: reads the stream, owns leases, writes votes, tallies, rejects.
# Each table gets the operations the code calls on it, no more (DynamoDB
# checks a TransactWriteItems action by action: an Update in a transaction
# needs UpdateItem on its table, a Put PutItem).
resource "aws_iam_role" "worker" {
  name               = "${var.app}-worker"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ReadStream"
    actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [var.stream_arn]
  }
  # lease/src/stream/kinesis.rs, TALLY_CONSUMER_MODE=fan-out: the stream's
  # ARN, the consumer named after the application (TALLY_APP, var.app)
  # registered unless it exists (never deregistered by a worker), described
  # until ACTIVE, and one SubscribeToShard per shard: that consumer only,
  # never a replay's. DescribeStreamConsumer is called with the stream's ARN
  # and the consumer's name, which IAM checks as <stream>/consumer/<name>
  # (no creation time); SubscribeToShard with the consumer's ARN,
  # <stream>/consumer/<name>:<creation time>.
  statement {
    sid       = "RegisterConsumer"
    actions   = ["kinesis:DescribeStreamSummary", "kinesis:RegisterStreamConsumer"]
    resources = [var.stream_arn]
  }
  statement {
    sid       = "DescribeConsumer"
    actions   = ["kinesis:DescribeStreamConsumer"]
    resources = ["${var.stream_arn}/consumer/${var.app}", "${var.stream_arn}/consumer/${var.app}:*"]
  }
  statement {
    sid       = "FanOut"
    actions   = ["kinesis:SubscribeToShard"]
    resources = ["${var.stream_arn}/consumer/${var.app}:*"]
  }
  # lease/src/store/dynamo.rs: at start DescribeTable (Terraform made the
  # table, so the worker never asks to create it: no CreateTable); leases are read by GetItem,
  # Scan and Query on the owner index, created by Put (with an Update of the
  # fleet item), renewed, taken and checkpointed by UpdateItem, and the
  # leases of finished parent shards deleted by DeleteItem: the only table
  # the worker deletes in.
  statement {
    sid       = "Leases"
    actions   = ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = local.leases_arns
  }
  # crates/store/src/dynamo.rs: the poll cache reads polls; the worker
  # never writes them.
  statement {
    sid       = "ReadPolls"
    actions   = ["dynamodb:GetItem"]
    resources = [var.table_arns["polls"]]
  }
  # The dedupe: batched PartiQL INSERTs (BatchExecuteStatement checks
  # PartiQLInsert), a consistent BatchGetItem of the inserts refused as
  # duplicates, and one conditional PutItem per vote on the single path and
  # for a statement resent alone.
  statement {
    sid       = "PutVotes"
    actions   = ["dynamodb:PartiQLInsert", "dynamodb:BatchGetItem", "dynamodb:PutItem"]
    resources = [var.table_arns["votes"]]
  }
  # The commit: counter deltas as Updates in TransactWriteItems.
  statement {
    sid       = "CountTallies"
    actions   = ["dynamodb:UpdateItem"]
    resources = [var.table_arns["tallies"]]
  }
  statement {
    sid       = "KeepRejects"
    actions   = ["dynamodb:PutItem"]
    resources = [var.table_arns["rejects"]]
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

# The gateway: puts votes; reads and writes polls (the admin API), reads
# one voter's ballot at a time, the counters and the voter's rejects.
resource "aws_iam_role" "gateway" {
  name               = "${var.app}-gateway"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "gateway" {
  statement {
    sid       = "PutVotes"
    actions   = ["kinesis:DescribeStreamSummary", "kinesis:ListShards", "kinesis:PutRecords"]
    resources = [var.stream_arn]
  }
  # Listing (Scan), reading, creating, opening and closing polls.
  statement {
    sid       = "Polls"
    actions   = ["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [var.table_arns["polls"]]
  }
  # Ballots by key only, never a scan of everyone's: the caller's own
  # (votes/me, GetItem) and the 409 pre-check's batched reads (BatchGetItem).
  statement {
    sid       = "ReadBallot"
    actions   = ["dynamodb:GetItem", "dynamodb:BatchGetItem"]
    resources = [var.table_arns["votes"]]
  }
  statement {
    sid       = "ReadTallies"
    actions   = ["dynamodb:BatchGetItem"]
    resources = [var.table_arns["tallies"]]
  }
  # The caller's rejected votes, through the voter index (VOTER_INDEX in
  # crates/store/src/dynamo.rs).
  statement {
    sid       = "ReadRejects"
    actions   = ["dynamodb:Query"]
    resources = ["${var.table_arns["rejects"]}/index/voter-index"]
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

# The finalizer (`tally finalize`, a scheduled or one-off task, and the
# operator's other commands on the live tables: resolve, audit, snapshot,
# poll, leases, results, vote-status): reads the stream positions and the
# lease table, recounts votes, finalizes polls and writes final results to
# the snapshot bucket. Each table gets the operations those commands call
# on it (src/operations.rs), no more.
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
  # `finalize` scans the leases (is every shard processed past the close);
  # `leases` scans them, or queries the owner index, and reads the fleet item.
  statement {
    sid       = "ReadLeases"
    actions   = ["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query"]
    resources = local.leases_arns
  }
  # Read by key and listed (Scan); created by `poll create`; opened,
  # closed, made final and marked mismatched by UpdateItem.
  statement {
    sid       = "Polls"
    actions   = ["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [var.table_arns["polls"]]
  }
  # The recount's parallel Scan; one ballot by key (`vote-status`).
  statement {
    sid       = "RecountVotes"
    actions   = ["dynamodb:GetItem", "dynamodb:Scan"]
    resources = [var.table_arns["votes"]]
  }
  # The counters read, and replaced by `resolve --use recount` (PutItem):
  # never added to, which only the worker does.
  statement {
    sid       = "Tallies"
    actions   = ["dynamodb:BatchGetItem", "dynamodb:PutItem"]
    resources = [var.table_arns["tallies"]]
  }
  # A voter's rejected votes (`vote-status`), through the voter index.
  statement {
    sid       = "ReadRejects"
    actions   = ["dynamodb:Query"]
    resources = ["${var.table_arns["rejects"]}/index/voter-index"]
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

# `tally replay` (a one-off task of its own): reads the live poll, votes
# and counters and the stream, never writes them; creates and writes its
# shadow tables and its own lease table, which are named <app>-replay-* or
# <app>-restored-* (var.replay_table_arns), never a live table's name.
resource "aws_iam_role" "replay" {
  name               = "${var.app}-replay"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = var.tags
}

locals {
  replay_arns = flatten([for arn in var.replay_table_arns : [arn, "${arn}/index/*"]])
}

data "aws_iam_policy_document" "replay" {
  statement {
    sid       = "ReadStream"
    actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
    resources = [var.stream_arn]
  }
  # --consumer-mode fan-out (the default): a stream consumer of the
  # replay's own, named after its --replay-app (<app>-replay* or
  # <app>-restored*, like its lease table), registered, subscribed through
  # and deregistered when the replay ends; never the live application's.
  statement {
    sid       = "RegisterConsumer"
    actions   = ["kinesis:DescribeStreamSummary", "kinesis:RegisterStreamConsumer"]
    resources = [var.stream_arn]
  }
  statement {
    sid       = "FanOut"
    actions   = ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard", "kinesis:DeregisterStreamConsumer"]
    resources = ["${var.stream_arn}/consumer/${var.app}-replay*", "${var.stream_arn}/consumer/${var.app}-restored*"]
  }
  statement {
    sid       = "ReadPoll"
    actions   = ["dynamodb:GetItem"]
    resources = [var.table_arns["polls"]]
  }
  statement {
    sid       = "RecountVotes"
    actions   = ["dynamodb:Scan"]
    resources = [var.table_arns["votes"]]
  }
  statement {
    sid       = "ReadTallies"
    actions   = ["dynamodb:BatchGetItem"]
    resources = [var.table_arns["tallies"]]
  }
  # The shadow tables (created unless they exist, with the poll copied in,
  # the votes, rejects and counters of the replay) and the replay's lease
  # table (leases created, renewed, checkpointed and cleaned up).
  statement {
    sid       = "ShadowTables"
    actions   = ["dynamodb:CreateTable", "dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:PartiQLInsert"]
    resources = local.replay_arns
  }
  statement {
    sid       = "Decrypt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
  # After a restore the live tables are <app>-restored-<name>-*, which the
  # patterns above also match: whatever they match, the tables the tasks
  # use now are never written or deleted by a replay.
  statement {
    sid       = "NeverLiveTables"
    effect    = "Deny"
    actions   = ["dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate", "dynamodb:PartiQLDelete"]
    resources = local.table_and_index_arns
  }
}

resource "aws_iam_role_policy" "replay" {
  name   = "replay-polls"
  role   = aws_iam_role.replay.id
  policy = data.aws_iam_policy_document.replay.json
}
