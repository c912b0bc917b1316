# The vote stream: provisioned shards or on-demand, encrypted with KMS.

variable "name" {
  description = "Stream name."
  type        = string
}

variable "shard_count" {
  description = "Shards in provisioned mode (ignored on demand). 334 carry 250,000 plain votes/s, 64 with KPL aggregation (docs/DESIGN.md section 3)."
  type        = number
  default     = 4
}

variable "on_demand" {
  description = "On-demand capacity instead of a fixed shard count."
  type        = bool
  default     = false
}

variable "retention_hours" {
  description = "How long records stay readable (replays and recounts of the stream need them)."
  type        = number
  default     = 48
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption."
  type        = string
}

variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_kinesis_stream" "votes" {
  name             = var.name
  shard_count      = var.on_demand ? null : var.shard_count
  retention_period = var.retention_hours
  encryption_type  = "KMS"
  kms_key_id       = var.kms_key_arn

  stream_mode_details {
    stream_mode = var.on_demand ? "ON_DEMAND" : "PROVISIONED"
  }

  shard_level_metrics = ["IncomingRecords", "IteratorAgeMilliseconds", "ReadProvisionedThroughputExceeded", "WriteProvisionedThroughputExceeded"]
  tags                = var.tags
}

output "arn" {
  value = aws_kinesis_stream.votes.arn
}

output "name" {
  value = aws_kinesis_stream.votes.name
}
