# CloudFront in front of the gateway's load balancer: the pages and the
# results are served from the edge, everything else (votes, a voter's own
# vote, the admin API, the results streams) passes through uncached.
#
# Cached (the same answer for everyone, so nothing personal can be kept):
# - GET /v1/polls/{poll}/results: for as long as the gateway's
#   Cache-Control says (max-age=1 with stale-while-revalidate while the
#   poll can change, a day once it is final), revalidated with its ETag.
#   Through Origin Shield in the load balancer's region, every edge
#   location asks the shield, and the shield asks the gateway about once a
#   second per poll, however many viewers there are.
# - the pages and their assets (the default behaviour): at least a second
#   at the edge (their `no-cache` is for browsers), longer if the gateway
#   says so.
# The cache key of both is the path alone: no Authorization header, no
# cookie, no query string, and their origin requests carry none either.
#
# Never cached (managed CachingDisabled, every viewer header and the query
# string forwarded, Authorization included): everything under /v1 but the
# results (votes, votes/me, the poll list, which shows drafts to admins,
# polls, open, close, pipeline, dev tokens), the results streams, /healthz
# and /readyz. /metrics is answered at the edge with a 404.

locals {
  # Two origins, one load balancer: Origin Shield only for what can be
  # cached (it collapses the edges' requests into one); uncacheable
  # requests go straight to the load balancer and do not pay for it.
  shielded_origin = "gateway-shielded"
  direct_origin   = "gateway"

  # CloudFront's own answer to an origin error is kept this long (seconds),
  # for every behaviour. A 4xx answers one caller (a voter's 404 from
  # votes/me, a 403 for a non-admin) and must never be shown to another; a
  # short-lived 5xx spares a struggling origin the retries of every viewer.
  error_caching = {
    400 = 0
    403 = 0
    404 = 0
    405 = 0
    414 = 0
    500 = 0
    501 = 0
    502 = 1
    503 = 1
    504 = 1
  }
}

# Results: the gateway's Cache-Control decides (min 0, so its max-age=1
# holds; max a day, for final polls). default_ttl applies only if it sent
# none.
resource "aws_cloudfront_cache_policy" "live" {
  name        = "${var.app}-live"
  comment     = "Results: as long as the origin's Cache-Control says"
  min_ttl     = 0
  default_ttl = 1
  max_ttl     = 86400
  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = true
    enable_accept_encoding_brotli = true
    headers_config {
      header_behavior = "none"
    }
    cookies_config {
      cookie_behavior = "none"
    }
    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

# Pages and assets: built into the gateway and the same for everyone. The
# gateway sends them with `no-cache` so that browsers pick up a deploy at
# once; a minimum of one second keeps them at the edge anyway (a minimum
# TTL above 0 outranks no-cache), so a deploy shows within a second and
# the origin sees about one page request per second per edge.
resource "aws_cloudfront_cache_policy" "pages" {
  name        = "${var.app}-pages"
  comment     = "Pages: at least a second, longer if the origin says so"
  min_ttl     = 1
  default_ttl = 1
  max_ttl     = 86400
  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = true
    enable_accept_encoding_brotli = true
    headers_config {
      header_behavior = "none"
    }
    cookies_config {
      cookie_behavior = "none"
    }
    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

data "aws_cloudfront_cache_policy" "disabled" {
  name = "Managed-CachingDisabled"
}

# Cached paths: only Host goes to the origin (the load balancer's
# certificate is checked against it), never a token or a cookie.
resource "aws_cloudfront_origin_request_policy" "cached" {
  name    = "${var.app}-cached"
  comment = "Cached paths: Host only"
  headers_config {
    header_behavior = "whitelist"
    headers {
      items = ["Host"]
    }
  }
  cookies_config {
    cookie_behavior = "none"
  }
  query_strings_config {
    query_string_behavior = "none"
  }
}

# Uncached paths: the request as the viewer sent it: Authorization (which
# an origin request policy may forward only when caching is disabled),
# Content-Type, Idempotency-Key, Last-Event-ID, Origin and the CORS
# preflight headers, and the query string. The gateway uses no cookies.
resource "aws_cloudfront_origin_request_policy" "api" {
  name    = "${var.app}-api"
  comment = "Uncached paths: every viewer header and the query string"
  headers_config {
    header_behavior = "allViewer"
  }
  cookies_config {
    cookie_behavior = "none"
  }
  query_strings_config {
    query_string_behavior = "all"
  }
}

resource "aws_cloudfront_response_headers_policy" "security" {
  name    = "${var.app}-security"
  comment = "HSTS, nosniff, no framing, referrer policy; CORS on the cached paths"
  security_headers_config {
    # The aliases are names this deployment owns: their subdomains are
    # HTTPS too. `preload` only consents; nothing is submitted anywhere.
    strict_transport_security {
      access_control_max_age_sec = 63072000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }
    content_type_options {
      override = true
    }
    frame_options {
      frame_option = "DENY"
      override     = true
    }
    referrer_policy {
      referrer_policy = "strict-origin-when-cross-origin"
      override        = true
    }
  }
  # The cached paths' origin requests carry no Origin header, so the
  # gateway cannot answer CORS there: CloudFront does, from the same list.
  # Elsewhere the gateway's own answer stands (origin_override = false).
  dynamic "cors_config" {
    for_each = length(var.cors_origins) > 0 ? [1] : []
    content {
      access_control_allow_credentials = false
      access_control_max_age_sec       = 600
      origin_override                  = false
      access_control_allow_origins {
        items = var.cors_origins
      }
      access_control_allow_methods {
        items = ["GET", "HEAD", "POST", "OPTIONS"]
      }
      access_control_allow_headers {
        items = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
      }
      access_control_expose_headers {
        items = ["Retry-After", "ETag"]
      }
    }
  }
}

# Paths that must never be served through the distribution (the gateway's
# /metrics) are answered here, at the edge, with the gateway's own 404.
resource "aws_cloudfront_function" "not_found" {
  name    = "${var.app}-not-found"
  runtime = "cloudfront-js-2.0"
  comment = "A 404 at the edge: the request never reaches the origin"
  publish = true
  code    = file("${path.module}/not-found.js")
}

resource "aws_cloudfront_distribution" "this" {
  #checkov:skip=CKV_AWS_305:the origin is the gateway, which serves / itself; a default root object would rewrite / to a file it does not have
  #checkov:skip=CKV_AWS_310:one origin (the gateway's load balancer, in one region); a failover origin group serves GET and HEAD only and there is no second region to fail over to
  #checkov:skip=CKV2_AWS_47:the web ACL comes from modules/waf (CLOUDFRONT scope, with KnownBadInputs for Log4j); checkov cannot follow it across modules
  enabled         = true
  is_ipv6_enabled = true
  http_version    = "http2and3"
  comment         = "${var.app}: pages, API and results in front of the gateway"
  aliases         = var.aliases
  price_class     = var.price_class
  web_acl_id      = var.web_acl_arn

  origin {
    origin_id   = local.shielded_origin
    domain_name = var.origin_domain_name
    custom_origin_config {
      http_port                = 80
      https_port               = 443
      origin_protocol_policy   = "https-only"
      origin_ssl_protocols     = ["TLSv1.2"]
      origin_read_timeout      = 30
      origin_keepalive_timeout = 60
    }
    custom_header {
      name  = var.origin_header_name
      value = var.origin_secret
    }
    origin_shield {
      enabled              = true
      origin_shield_region = var.origin_shield_region
    }
  }

  origin {
    origin_id   = local.direct_origin
    domain_name = var.origin_domain_name
    custom_origin_config {
      http_port              = 80
      https_port             = 443
      origin_protocol_policy = "https-only"
      origin_ssl_protocols   = ["TLSv1.2"]
      # Also the longest silence on a results stream: the gateway's
      # heartbeat (TALLY_SSE_HEARTBEAT_MS, 15 s) must stay under it.
      origin_read_timeout      = 60
      origin_keepalive_timeout = 60
    }
    custom_header {
      name  = var.origin_header_name
      value = var.origin_secret
    }
  }

  # In order: the first pattern that matches a path decides.

  ordered_cache_behavior {
    path_pattern           = "/metrics*"
    target_origin_id       = local.direct_origin
    viewer_protocol_policy = "https-only"
    allowed_methods        = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"]
    cached_methods         = ["GET", "HEAD"]
    cache_policy_id        = data.aws_cloudfront_cache_policy.disabled.id
    function_association {
      event_type   = "viewer-request"
      function_arn = aws_cloudfront_function.not_found.arn
    }
  }

  ordered_cache_behavior {
    path_pattern               = "/v1/polls/*/results/stream"
    target_origin_id           = local.direct_origin
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.api.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
    compress                   = false # events must flow as they are sent
  }

  ordered_cache_behavior {
    path_pattern               = "/v1/polls/*/results"
    target_origin_id           = local.shielded_origin
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = aws_cloudfront_cache_policy.live.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.cached.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
    compress                   = true
  }

  ordered_cache_behavior {
    path_pattern               = "/v1/*"
    target_origin_id           = local.direct_origin
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.api.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
    compress                   = true
  }

  ordered_cache_behavior {
    path_pattern               = "/healthz"
    target_origin_id           = local.direct_origin
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.api.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
  }

  ordered_cache_behavior {
    path_pattern               = "/readyz"
    target_origin_id           = local.direct_origin
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.api.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
  }

  # The pages (/, /vote, /dashboard, /admin), their assets (/assets/*) and
  # the OpenAPI document. Every route that answers differently per caller
  # is under /v1 (above): a new one outside it needs its own behaviour.
  default_cache_behavior {
    target_origin_id           = local.shielded_origin
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = aws_cloudfront_cache_policy.pages.id
    origin_request_policy_id   = aws_cloudfront_origin_request_policy.cached.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
    compress                   = true
  }

  dynamic "custom_error_response" {
    for_each = local.error_caching
    content {
      error_code            = custom_error_response.key
      error_caching_min_ttl = custom_error_response.value
    }
  }

  viewer_certificate {
    acm_certificate_arn      = var.certificate_arn
    ssl_support_method       = "sni-only"
    minimum_protocol_version = "TLSv1.2_2021"
  }

  restrictions {
    geo_restriction {
      restriction_type = length(var.allowed_countries) > 0 ? "whitelist" : "none"
      locations        = var.allowed_countries
    }
  }

  # Standard logs (one object per edge and few minutes, with the viewer's
  # address, path, status, cache result and time taken).
  logging_config {
    bucket          = var.log_bucket_domain_name
    prefix          = "${var.app}/"
    include_cookies = false
  }

  tags = var.tags
}
