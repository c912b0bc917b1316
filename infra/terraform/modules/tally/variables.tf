variable "app" {
  description = "Application name (TALLY_APP): names everything."
  type        = string
}

variable "region" {
  type = string
}

variable "image" {
  description = "The tally image built from the Dockerfile."
  type        = string
}

variable "vpc_id" {
  type = string
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "public_subnet_ids" {
  type = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the gateway's HTTPS listener."
  type        = string
}

variable "shard_count" {
  type    = number
  default = 4
}

variable "on_demand_stream" {
  type    = bool
  default = false
}

variable "workers_min" {
  type    = number
  default = 2
}

variable "workers_max" {
  type    = number
  default = 8
}

variable "shards_per_worker" {
  type    = number
  default = 4
}

variable "gateway_count" {
  type    = number
  default = 2
}

variable "worker_cpu" {
  type    = number
  default = 1024
}

variable "worker_memory" {
  type    = number
  default = 2048
}

variable "gateway_cpu" {
  type    = number
  default = 1024
}

variable "gateway_memory" {
  type    = number
  default = 2048
}

variable "api_rate_limit" {
  type    = number
  default = 10000
}

variable "api_burst_limit" {
  type    = number
  default = 20000
}

variable "waf_rate_limit_per_5_min" {
  type    = number
  default = 2000
}

variable "cors_origins" {
  type    = list(string)
  default = []
}

variable "alarm_email" {
  description = "Address subscribed to the alarms (empty: none)."
  type        = string
  default     = ""
}

variable "deletion_protection" {
  type    = bool
  default = true
}

variable "tags" {
  type    = map(string)
  default = {}
}
