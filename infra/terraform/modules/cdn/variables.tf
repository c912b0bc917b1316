variable "app" {
  type = string
}

variable "aliases" {
  description = "The public names of the distribution (vote.example.com); certificate_arn covers them, and so must the load balancer's certificate (CloudFront sends them as Host and checks the origin's certificate against them)."
  type        = list(string)
  validation {
    condition     = length(var.aliases) > 0
    error_message = "aliases must name at least one domain: the distribution serves HTTPS with its own certificate."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for the aliases, in us-east-1 (CloudFront takes certificates from there only)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:us-east-1:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate in us-east-1."
  }
}

variable "origin_domain_name" {
  description = "The gateway's load balancer (its DNS name)."
  type        = string
}

variable "origin_shield_region" {
  description = "Where Origin Shield runs: the load balancer's region."
  type        = string
}

variable "origin_header_name" {
  description = "Header CloudFront adds to every origin request; the load balancer forwards only requests that carry it with origin_secret."
  type        = string
}

variable "origin_secret" {
  type      = string
  sensitive = true
}

variable "web_acl_arn" {
  description = "A CLOUDFRONT-scope WAF web ACL (made in us-east-1)."
  type        = string
}

variable "log_bucket_domain_name" {
  description = "Bucket of the standard logs (<bucket>.s3.amazonaws.com), with ACLs enabled."
  type        = string
}

variable "price_class" {
  description = "PriceClass_All (every edge location), PriceClass_200 or PriceClass_100 (fewer, cheaper)."
  type        = string
  default     = "PriceClass_All"
  validation {
    condition     = contains(["PriceClass_All", "PriceClass_200", "PriceClass_100"], var.price_class)
    error_message = "price_class must be PriceClass_All, PriceClass_200 or PriceClass_100."
  }
}

variable "allowed_countries" {
  description = "ISO 3166-1 alpha-2 codes of the only countries served (a national vote); empty: everywhere."
  type        = list(string)
  default     = []
}

variable "cors_origins" {
  description = "Web origins allowed to read the API cross-origin (the gateway's TALLY_CORS_ORIGINS): the distribution answers CORS itself on the cached paths, whose origin requests carry no Origin header."
  type        = list(string)
  default     = []
}

variable "tags" {
  type    = map(string)
  default = {}
}
