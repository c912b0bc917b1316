output "url" {
  description = "The public URL: the first alias."
  value       = "https://${var.aliases[0]}"
}

output "distribution_id" {
  description = "For invalidations."
  value       = aws_cloudfront_distribution.this.id
}

output "domain_name" {
  description = "Where the aliases' DNS records point (an alias or CNAME record)."
  value       = aws_cloudfront_distribution.this.domain_name
}

output "hosted_zone_id" {
  description = "For Route 53 alias records."
  value       = aws_cloudfront_distribution.this.hosted_zone_id
}
