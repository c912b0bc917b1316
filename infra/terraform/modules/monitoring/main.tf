# The CloudWatch dashboard and alarms. Tally's own metrics are those the
# code publishes (src/cloudwatch.rs; a test checks every name used here).

variable "app" {
  type = string
}

variable "region" {
  type = string
}

variable "namespace" {
  description = "Namespace of Tally's metrics (TALLY_CLOUDWATCH_NAMESPACE)."
  type        = string
  default     = "Tally"
}

variable "stream_name" {
  type = string
}

variable "alarm_topic_arn" {
  description = "SNS topic that receives the alarms."
  type        = string
}

variable "iterator_age_ms_max" {
  description = "Alarm when reads fall this far behind the stream."
  type        = number
  default     = 30000
}

variable "tags" {
  type    = map(string)
  default = {}
}

locals {
  app_dimension = ["Application", var.app]
  widgets = [
    { title = "Votes per minute", metrics = [
      [var.namespace, "VotesCounted", "Application", var.app, { stat = "Sum" }],
      [var.namespace, "VotesDuplicate", "Application", var.app, { stat = "Sum" }],
      [var.namespace, "VotesAccepted", "Application", var.app, { stat = "Sum" }],
    ] },
    { title = "Rejected votes by reason", metrics = [
      for reason in ["malformed", "unknown_poll", "poll_not_open", "invalid_option", "bad_aggregate"] :
      [var.namespace, "VotesRejected", "Application", var.app, "Reason", reason, { stat = "Sum" }]
    ] },
    { title = "Iterator age (ms), stream and per worker", metrics = [
      ["AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", "StreamName", var.stream_name, { stat = "Maximum" }],
      [{ id = "behind", label = "", expression = "SEARCH('{${var.namespace},Application,WorkerId} MetricName=\"MillisBehindLatest\" Application=\"${var.app}\"', 'Maximum', 60)" }],
    ] },
    { title = "Leases per worker, open shards, lost leases", metrics = [
      [{ id = "leases", label = "", expression = "SEARCH('{${var.namespace},Application,WorkerId} MetricName=\"LeasesHeld\" Application=\"${var.app}\"', 'Maximum', 60)" }],
      [var.namespace, "OpenShards", "Application", var.app, { stat = "Maximum" }],
      [var.namespace, "LeasesLost", "Application", var.app, { stat = "Sum" }],
    ] },
    { title = "Commit and vote latency (ms)", metrics = [
      [var.namespace, "CommitLatency", "Application", var.app, { stat = "Average" }],
      [var.namespace, "VoteLatency", "Application", var.app, { stat = "Average" }],
    ] },
    { title = "Throttles", metrics = [
      [var.namespace, "Retries", "Application", var.app, "Cause", "throttled", { stat = "Sum" }],
      [var.namespace, "GetRecordsThrottles", "Application", var.app, { stat = "Sum" }],
      ["AWS/Kinesis", "WriteProvisionedThroughputExceeded", "StreamName", var.stream_name, { stat = "Sum" }],
    ] },
  ]
}

resource "aws_cloudwatch_dashboard" "tally" {
  dashboard_name = "${var.app}-tally"
  dashboard_body = jsonencode({
    widgets = [for index, widget in local.widgets : {
      type   = "metric"
      x      = (index % 2) * 12
      y      = floor(index / 2) * 6
      width  = 12
      height = 6
      properties = {
        title   = widget.title
        region  = var.region
        metrics = widget.metrics
        period  = 60
        view    = "timeSeries"
      }
    }]
  })
}

# Every alarm, in one table: what it watches and when it fires. `ok`: also
# tell the topic when it clears (for the alarms a person waits on).
locals {
  alarms = {
    iterator_age = {
      description        = "Workers are falling behind the stream: results are late (runbook: ops/runbooks/scale.md)"
      namespace          = "AWS/Kinesis"
      metric_name        = "GetRecords.IteratorAgeMilliseconds"
      dimensions         = { StreamName = var.stream_name }
      statistic          = "Maximum"
      period             = 60
      evaluation_periods = 3
      threshold          = var.iterator_age_ms_max
      ok                 = true
    }
    rejects = {
      description        = "Many malformed votes: a producer is broken or hostile (tally vote-status, the rejects table)"
      namespace          = var.namespace
      metric_name        = "VotesRejected"
      dimensions         = { Application = var.app, Reason = "malformed" }
      statistic          = "Sum"
      period             = 300
      evaluation_periods = 1
      threshold          = 1000
      ok                 = false
    }
    lost_leases = {
      description        = "Workers keep losing leases: paused or overloaded tasks (runbook: ops/runbooks/failover.md)"
      namespace          = var.namespace
      metric_name        = "LeasesLost"
      dimensions         = { Application = var.app }
      statistic          = "Sum"
      period             = 300
      evaluation_periods = 2
      threshold          = 10
      ok                 = false
    }
    lease_table_skipped_items = {
      description        = "The lease table holds items that are not leases: every worker skips them, and a shard whose lease it is goes unread (tally leases lists them; fix or delete them)"
      namespace          = var.namespace
      metric_name        = "LeaseTableSkippedItems"
      dimensions         = { Application = var.app }
      statistic          = "Maximum"
      period             = 60
      evaluation_periods = 1
      threshold          = 0
      ok                 = true
    }
    recount_mismatch = {
      description        = "A closed poll's recount differs from its tallies; it stays unfinalized (runbook: ops/runbooks/recount.md)"
      namespace          = var.namespace
      metric_name        = "RecountMismatchPolls"
      dimensions         = { Application = var.app }
      statistic          = "Maximum"
      period             = 60
      evaluation_periods = 1
      threshold          = 0
      ok                 = false
    }
    throttling = {
      description        = "DynamoDB throttles the workers: raise table limits or pre-warm (docs/DESIGN.md section 3)"
      namespace          = var.namespace
      metric_name        = "Retries"
      dimensions         = { Application = var.app, Cause = "throttled" }
      statistic          = "Sum"
      period             = 60
      evaluation_periods = 3
      threshold          = 100
      ok                 = false
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "alarm" {
  for_each            = local.alarms
  alarm_name          = "${var.app}-${replace(each.key, "_", "-")}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric_name
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluation_periods
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = each.value.ok ? [var.alarm_topic_arn] : []
  tags                = var.tags
}

# The alarms were resources of their own: keep them, do not replace them.
moved {
  from = aws_cloudwatch_metric_alarm.iterator_age
  to   = aws_cloudwatch_metric_alarm.alarm["iterator_age"]
}
moved {
  from = aws_cloudwatch_metric_alarm.rejects
  to   = aws_cloudwatch_metric_alarm.alarm["rejects"]
}
moved {
  from = aws_cloudwatch_metric_alarm.lost_leases
  to   = aws_cloudwatch_metric_alarm.alarm["lost_leases"]
}
moved {
  from = aws_cloudwatch_metric_alarm.recount_mismatch
  to   = aws_cloudwatch_metric_alarm.alarm["recount_mismatch"]
}
moved {
  from = aws_cloudwatch_metric_alarm.throttling
  to   = aws_cloudwatch_metric_alarm.alarm["throttling"]
}

output "dashboard_name" {
  value = aws_cloudwatch_dashboard.tally.dashboard_name
}
