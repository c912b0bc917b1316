variable "app" {
  description = "Application name (TALLY_APP): names everything."
  type        = string
}

variable "region" {
  type = string
}

variable "image" {
  description = "The tally image built from the Dockerfile, in ECR: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (or @sha256:...)."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[^:@]+[:@].+$", var.image))
    error_message = "image must be an ECR image: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>; the tasks may pull from that one repository only."
  }
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
  description = "ACM certificate of the load balancer's HTTPS listener, in the deployment's region; it must cover cdn_aliases."
  type        = string
}

variable "cdn_aliases" {
  description = "The public names of the CloudFront distribution in front of the gateway (vote.example.com). Point their DNS at the cdn_domain_name output; certificate_arn (the load balancer's) must cover them too, since CloudFront sends them to it as Host."
  type        = list(string)
}

variable "cdn_certificate_arn" {
  description = "ACM certificate of cdn_aliases, in us-east-1 (where CloudFront takes certificates from)."
  type        = string
}

variable "cdn_price_class" {
  description = "CloudFront edge locations: PriceClass_All, PriceClass_200 or PriceClass_100."
  type        = string
  default     = "PriceClass_All"
}

variable "cdn_allowed_countries" {
  description = "Country codes (ISO 3166-1 alpha-2) the distribution serves, for a national vote; empty: every country."
  type        = list(string)
  default     = []
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

variable "gateways_min" {
  description = "Fewest gateway tasks (the service autoscales on CPU and requests per task up to gateways_max)."
  type        = number
  default     = 2
}

variable "gateways_max" {
  description = "Most gateway tasks."
  type        = number
  default     = 8
}

variable "gateway_cpu_target" {
  description = "Average CPU (percent) the gateway autoscaling keeps."
  type        = number
  default     = 60
}

variable "gateway_requests_per_target" {
  description = "Requests a minute per gateway task (ALBRequestCountPerTarget) the gateway autoscaling keeps."
  type        = number
  default     = 30000
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

variable "waf_token_rate_limit_per_5_min" {
  description = "Requests one Authorization header (one token) may send in 5 minutes, from any number of addresses, before it is blocked (see ../waf)."
  type        = number
  default     = 300
}

variable "waf_cached_paths_rate_limit_per_5_min" {
  description = "Requests for the pages and results (served from CloudFront's cache) one address may send in 5 minutes before it is blocked: high, since many viewers may share an address (see ../waf)."
  type        = number
  default     = 30000
}

variable "voter_registration" {
  description = "How voters get an account: \"self\" (self sign-up with the pre-sign-up check), \"preregistered\" (the operator imports the voter list) or \"oidc\" (an external OpenID Connect provider)."
  type        = string
  default     = "self"
  validation {
    condition     = contains(["self", "preregistered", "oidc"], var.voter_registration)
    error_message = "voter_registration must be \"self\", \"preregistered\" or \"oidc\"."
  }
}

variable "voter_claim" {
  description = "The token claim both vote paths take the voter id from (TALLY_AUTH_VOTER_CLAIM and the mapping template). For phone_number and email, the matching <claim>_verified must be true."
  type        = string
  default     = "phone_number"
  validation {
    # It is put into the mapping template between quotes: no quotes, no $ or #.
    condition     = can(regex("^[A-Za-z0-9_:.-]{1,64}$", var.voter_claim))
    error_message = "voter_claim must be 1 to 64 of [A-Za-z0-9_:.-]."
  }
}

variable "ses_identity_arn" {
  description = "ARN of the verified SES identity (domain or address) the user pool sends email from, instead of Cognito's default sender."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ses:[a-z0-9-]+:[0-9]{12}:identity/.+$", var.ses_identity_arn))
    error_message = "ses_identity_arn must be an SES identity ARN (arn:aws:ses:<region>:<account>:identity/<domain or address>)."
  }
}

variable "email_from" {
  description = "From address of the pool's email, e.g. \"Tally <no-reply@example.com>\" (empty: the SES identity's address)."
  type        = string
  default     = ""
}

variable "pre_sign_up_concurrency" {
  description = "Reserved concurrency of the pre-sign-up check (voter_registration = \"self\")."
  type        = number
  default     = 20
  validation {
    condition     = var.pre_sign_up_concurrency >= 1
    error_message = "pre_sign_up_concurrency must be at least 1."
  }
}

variable "oidc_provider_name" {
  description = "voter_registration = \"oidc\": the provider's name in the pool (and on the sign-in page)."
  type        = string
  default     = "voter-id"
}

variable "oidc_issuer" {
  description = "voter_registration = \"oidc\": the provider's issuer URL (https)."
  type        = string
  default     = ""
  validation {
    condition     = var.oidc_issuer == "" || can(regex("^https://", var.oidc_issuer))
    error_message = "oidc_issuer must be an https URL."
  }
}

variable "oidc_client_id" {
  description = "voter_registration = \"oidc\": this pool's client id at the provider."
  type        = string
  default     = ""
}

variable "oidc_client_secret_arn" {
  description = "voter_registration = \"oidc\": Secrets Manager secret holding this pool's client secret at the provider (its value ends up in the Terraform state, like every Cognito provider secret)."
  type        = string
  default     = ""
  validation {
    condition     = var.oidc_client_secret_arn == "" || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.oidc_client_secret_arn))
    error_message = "oidc_client_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "oidc_scopes" {
  description = "voter_registration = \"oidc\": scopes asked of the provider (space-separated); they must release the phone claims."
  type        = string
  default     = "openid phone"
}

variable "oidc_phone_claim" {
  description = "voter_registration = \"oidc\": the provider's claim holding the voter's verified phone number (E.164)."
  type        = string
  default     = "phone_number"
}

variable "oidc_phone_verified_claim" {
  description = "voter_registration = \"oidc\": the provider's claim saying that number is verified."
  type        = string
  default     = "phone_number_verified"
}

variable "auth_domain_prefix" {
  description = "voter_registration = \"oidc\": prefix of the pool's sign-in domain (<prefix>.auth.<region>.amazoncognito.com)."
  type        = string
  default     = ""
}

variable "oauth_callback_urls" {
  description = "voter_registration = \"oidc\": where the sign-in page may send voters back to."
  type        = list(string)
  default     = []
}

variable "oauth_logout_urls" {
  type    = list(string)
  default = []
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups allowed to scrape the gateway's /metrics listener (port 9465) from inside the VPC; the load balancer never is."
  type        = list(string)
  default     = []
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

variable "vote_tables_prefix" {
  description = "Empty: the tasks use the vote tables this module makes (<app>-polls, -votes, -tallies, -rejects). Set after a point-in-time restore (ops/runbooks/restore.md) to the restored tables' prefix, <app>-restored-<something>-: the tasks and their roles then use <prefix>polls, votes, tallies and rejects, which the restore made outside Terraform; the tables this module made stay as they are. The lease table is always <app>-leases."
  type        = string
  default     = ""
  validation {
    # Names var.app: needs Terraform 1.9 or later (versions.tf). At most 200
    # characters, as the tasks' TALLY_TABLE_PREFIX (crates/service/src/settings.rs),
    # which keeps <prefix>rejects within DynamoDB's 255.
    condition     = var.vote_tables_prefix == "" || (startswith(var.vote_tables_prefix, "${var.app}-restored-") && can(regex("^[A-Za-z0-9._-]+-$", trimprefix(var.vote_tables_prefix, "${var.app}-restored-"))) && length(var.vote_tables_prefix) <= 200)
    error_message = "vote_tables_prefix must be empty or <app>-restored-<name>-, with this module's app and a name of [A-Za-z0-9._-], 200 characters at most (the replay role may write tables named so, the restore runbook names them so, the tasks take prefixes up to 200)."
  }
}

variable "deletion_protection" {
  type    = bool
  default = true
}

variable "tags" {
  type    = map(string)
  default = {}
}
