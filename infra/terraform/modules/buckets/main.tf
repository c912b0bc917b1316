# Three buckets: results snapshots and final results (versioned, KMS), the
# load balancer's access logs (SSE-S3: ALB log delivery cannot use a
# customer-managed key), and CloudFront's standard logs (SSE-S3, and with
# ACLs enabled: standard log delivery writes through a bucket ACL grant).

variable "app" {
  type = string
}

variable "region" {
  type = string
}

variable "kms_key_arn" {
  type = string
}

variable "tags" {
  type    = map(string)
  default = {}
}

data "aws_caller_identity" "current" {}

data "aws_elb_service_account" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
}

resource "aws_s3_bucket" "snapshots" {
  #checkov:skip=CKV_AWS_144:results are rebuilt from the tables and the stream; cross-region replication is a choice per deployment
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events
  #checkov:skip=CKV_AWS_18:access is audited with CloudTrail data events where wanted, not server access logs
  bucket = "${var.app}-snapshots-${local.account_id}"
  tags   = var.tags
}

resource "aws_s3_bucket" "alb_logs" {
  #checkov:skip=CKV_AWS_144:access logs stay in the region they describe
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events
  #checkov:skip=CKV_AWS_18:this is the log bucket; logging it into itself would loop
  #checkov:skip=CKV_AWS_145:ALB access log delivery supports SSE-S3 only
  bucket = "${var.app}-alb-logs-${local.account_id}"
  tags   = var.tags
}

resource "aws_s3_bucket" "cdn_logs" {
  #checkov:skip=CKV_AWS_144:access logs stay in the region they were delivered to
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events
  #checkov:skip=CKV_AWS_18:this is a log bucket; logging it into itself would loop
  #checkov:skip=CKV_AWS_145:standard logs are delivered by CloudFront's log delivery account through the bucket ACL; SSE-S3 keeps that account out of the key policy
  bucket = "${var.app}-cdn-logs-${local.account_id}"
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket                  = aws_s3_bucket.snapshots.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_public_access_block" "alb_logs" {
  bucket                  = aws_s3_bucket.alb_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Nothing is public: CloudFront's log delivery account is granted by
# canonical id, which public-ACL blocking allows.
resource "aws_s3_bucket_public_access_block" "cdn_logs" {
  bucket                  = aws_s3_bucket.cdn_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# CloudFront standard logging writes with ACLs: when a distribution names
# this bucket, CloudFront adds FULL_CONTROL for its log delivery account
# (awslogsdelivery) to the bucket ACL, which needs ACLs enabled. The bucket
# owner still owns what is written.
resource "aws_s3_bucket_ownership_controls" "cdn_logs" {
  #checkov:skip=CKV2_AWS_65:CloudFront standard log delivery needs bucket ACLs (its grant is added by CloudFront itself)
  bucket = aws_s3_bucket.cdn_logs.id
  rule {
    object_ownership = "BucketOwnerPreferred"
  }
}

resource "aws_s3_bucket_versioning" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_versioning" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_versioning" "cdn_logs" {
  bucket = aws_s3_bucket.cdn_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "cdn_logs" {
  bucket = aws_s3_bucket.cdn_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    id     = "tidy"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  rule {
    id     = "expire"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    expiration {
      days = 400
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "cdn_logs" {
  bucket = aws_s3_bucket.cdn_logs.id
  rule {
    id     = "expire"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    expiration {
      days = 400
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

data "aws_iam_policy_document" "alb_logs" {
  statement {
    sid       = "AlbDelivers"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.alb_logs.arn}/*"]
    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.alb_logs.arn, "${aws_s3_bucket.alb_logs.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "alb_logs" {
  bucket = aws_s3_bucket.alb_logs.id
  policy = data.aws_iam_policy_document.alb_logs.json
}

data "aws_iam_policy_document" "cdn_logs" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.cdn_logs.arn, "${aws_s3_bucket.cdn_logs.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "cdn_logs" {
  bucket = aws_s3_bucket.cdn_logs.id
  policy = data.aws_iam_policy_document.cdn_logs.json
}

output "snapshot_bucket" {
  value = aws_s3_bucket.snapshots.bucket
}

output "alb_logs_bucket" {
  value = aws_s3_bucket.alb_logs.bucket
}

output "cdn_logs_bucket_domain_name" {
  description = "Where CloudFront's standard logs go (<bucket>.s3.amazonaws.com); ready once ACLs are enabled on it."
  value       = aws_s3_bucket.cdn_logs.bucket_domain_name
  # A distribution naming a bucket without ACLs is refused.
  depends_on = [aws_s3_bucket_ownership_controls.cdn_logs]
}
