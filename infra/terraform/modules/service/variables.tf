variable "app" {
  description = "Application name (TALLY_APP); names the cluster, services and roles."
  type        = string
}

variable "image" {
  description = "The tally image (Dockerfile) in ECR: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (or @sha256:...). The tasks may pull from that repository only."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[^:@]+[:@].+$", var.image))
    error_message = "image must be an ECR image: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>."
  }
}

variable "region" {
  type = string
}

variable "vpc_id" {
  type = string
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks (no public IPs)."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the gateway's HTTPS listener; it must cover the distribution's aliases (CloudFront sends them as Host)."
  type        = string
}

variable "origin_header_name" {
  description = "Header the CloudFront distribution adds to every request it sends here; the listener forwards only requests carrying it with origin_secret."
  type        = string
}

variable "origin_secret" {
  description = "The value of origin_header_name (letters and digits: the listener's header match treats * and ? as wildcards)."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^[A-Za-z0-9]{32,128}$", var.origin_secret))
    error_message = "origin_secret must be 32 to 128 letters and digits."
  }
}

variable "alb_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs."
  type        = string
}

variable "stream_name" {
  type = string
}

variable "stream_arn" {
  type = string
}

variable "table_prefix" {
  type = string
}

variable "table_arns" {
  description = "Table ARNs by role: leases, polls, votes, tallies, rejects."
  type        = map(string)
}

variable "replay_table_arns" {
  description = "ARN patterns of the tables `tally replay` may create and write (its shadow tables and its lease table), e.g. arn:aws:dynamodb:<region>:<account>:table/<app>-replay-*: never the live tables."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "The key of the stream, the tables and the logs."
  type        = string
}

variable "snapshot_bucket" {
  description = "S3 bucket of results snapshots and final results (empty: none)."
  type        = string
  default     = ""
}

variable "metrics_namespace" {
  type    = string
  default = "Tally"
}

variable "worker_cpu" {
  type    = number
  default = 1024
}

variable "worker_memory" {
  type    = number
  default = 2048
}

variable "workers_min" {
  type    = number
  default = 2
}

variable "workers_max" {
  type    = number
  default = 64
}

variable "shards_per_worker" {
  description = "Open shards one worker is sized for: the fleet follows ceil(open shards / this)."
  type        = number
  default     = 4
}

variable "gateway_cpu" {
  type    = number
  default = 1024
}

variable "gateway_memory" {
  type    = number
  default = 2048
}

variable "gateways_min" {
  description = "Fewest gateway tasks; the service starts with this many and scales on CPU and requests between gateways_min and gateways_max."
  type        = number
  default     = 2
}

variable "gateways_max" {
  description = "Most gateway tasks."
  type        = number
  default     = 8
}

variable "gateway_cpu_target" {
  description = "Average CPU (percent) the gateway service's target tracking keeps."
  type        = number
  default     = 60
}

variable "gateway_requests_per_target" {
  description = "Requests a minute per gateway task (ALBRequestCountPerTarget) the gateway service's target tracking keeps."
  type        = number
  default     = 30000
}

variable "auth_jwks_url" {
  description = "JWKS of the voters' and admins' tokens (Cognito user pool)."
  type        = string
}

variable "auth_issuer" {
  type = string
}

variable "auth_audience" {
  type = string
}

variable "auth_admin_role" {
  description = "The Cognito group whose members may create, open and close polls (TALLY_AUTH_ADMIN_ROLE)."
  type        = string
}

variable "auth_voter_claim" {
  description = "The token claim the gateway takes the voter id from (TALLY_AUTH_VOTER_CLAIM); API Gateway's template reads the same one."
  type        = string
  default     = "phone_number"
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups that may scrape the gateway's /metrics listener (TALLY_GATEWAY_METRICS_ADDR, port 9465) from inside the VPC."
  type        = list(string)
  default     = []
}

variable "cors_origins" {
  description = "Origins allowed to call the API from browsers."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "deletion_protection" {
  type    = bool
  default = true
}

variable "tags" {
  type    = map(string)
  default = {}
}
