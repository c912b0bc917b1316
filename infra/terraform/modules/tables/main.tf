# The lease table and the vote tables, with the key schemas the code uses
# (src/store/dynamo.rs, lease/src/store/dynamo.rs): on demand, point-in-time
# recovery, encrypted with a customer-managed KMS key.

variable "app" {
  description = "Application name: the lease table is <app>-leases."
  type        = string
}

variable "table_prefix" {
  description = "Prefix of the vote tables (TALLY_TABLE_PREFIX)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption."
  type        = string
}

variable "deletion_protection" {
  description = "Refuse table deletion (prod)."
  type        = bool
  default     = true
}

variable "tags" {
  type    = map(string)
  default = {}
}

locals {
  tables = {
    leases = {
      name  = "${var.app}-leases"
      hash  = "leaseKey"
      range = null
      attrs = { leaseKey = "S", leaseOwner = "S" }
      index = { name = "leaseOwner-index", hash = "leaseOwner", range = null }
    }
    polls = {
      name  = "${var.table_prefix}polls"
      hash  = "poll_id"
      range = null
      attrs = { poll_id = "S" }
      index = null
    }
    votes = {
      name  = "${var.table_prefix}votes"
      hash  = "voter_id"
      range = "poll_id"
      attrs = { voter_id = "S", poll_id = "S" }
      index = null
    }
    tallies = {
      name  = "${var.table_prefix}tallies"
      hash  = "counter_id"
      range = null
      attrs = { counter_id = "S" }
      index = null
    }
    rejects = {
      name  = "${var.table_prefix}rejects"
      hash  = "position"
      range = null
      attrs = { position = "S", voter_id = "S", poll_id = "S" }
      index = { name = "voter-index", hash = "voter_id", range = "poll_id" }
    }
  }
}

resource "aws_dynamodb_table" "this" {
  for_each                    = local.tables
  name                        = each.value.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = each.value.hash
  range_key                   = each.value.range
  deletion_protection_enabled = var.deletion_protection

  dynamic "attribute" {
    for_each = each.value.attrs
    content {
      name = attribute.key
      type = attribute.value
    }
  }

  dynamic "global_secondary_index" {
    for_each = each.value.index == null ? [] : [each.value.index]
    content {
      name            = global_secondary_index.value.name
      hash_key        = global_secondary_index.value.hash
      range_key       = global_secondary_index.value.range
      projection_type = "ALL"
    }
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  # Rejected records expire when an `expires_at` is set on them (kept for
  # audits otherwise); no other table holds expiring data.
  dynamic "ttl" {
    for_each = each.key == "rejects" ? ["expires_at"] : []
    content {
      attribute_name = ttl.value
      enabled        = true
    }
  }

  tags = var.tags
}

output "arns" {
  description = "Table ARNs by role (leases, polls, votes, tallies, rejects)."
  value       = { for role, table in aws_dynamodb_table.this : role => table.arn }
}

output "names" {
  value = { for role, table in aws_dynamodb_table.this : role => table.name }
}
