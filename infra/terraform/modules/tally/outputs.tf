output "gateway_url" {
  description = "The gateway (pages, API, results streams), through CloudFront: the only way in (the load balancer admits the distribution alone)."
  value       = module.cdn.url
}

output "cdn_domain_name" {
  description = "The distribution's domain: the target of cdn_aliases' DNS records."
  value       = module.cdn.domain_name
}

output "cdn_hosted_zone_id" {
  description = "For Route 53 alias records to the distribution."
  value       = module.cdn.hosted_zone_id
}

output "cdn_distribution_id" {
  value = module.cdn.distribution_id
}

output "vote_api_url" {
  description = "API Gateway's vote path (POST <url>/v1/polls/{poll}/votes)."
  value       = module.api.invoke_url
}

output "stream_name" {
  value = module.stream.name
}

output "tables" {
  value = module.tables.names
}

output "snapshot_bucket" {
  value = module.buckets.snapshot_bucket
}

output "user_pool_id" {
  value = aws_cognito_user_pool.voters.id
}

output "user_pool_client_id" {
  value = aws_cognito_user_pool_client.web.id
}

output "dashboard" {
  value = module.monitoring.dashboard_name
}

output "finalizer_role_arn" {
  value = module.service.finalizer_role_arn
}

output "finalizer_task_definition" {
  value = module.service.finalizer_task_definition
}

output "replay_task_definition" {
  value = module.service.replay_task_definition
}

output "worker_security_group_id" {
  description = "The network configuration of one-off finalizer and replay runs."
  value       = module.service.worker_security_group_id
}

output "private_subnet_ids" {
  description = "The network configuration of one-off runs."
  value       = var.private_subnet_ids
}

output "one_off_run" {
  description = "What a one-off task run (ops/runbooks: recount.md, restore.md, deploy.md) takes: aws ecs run-task --cluster <cluster> --task-definition <task_definitions.finalizer or .replay> --launch-type FARGATE --network-configuration 'awsvpcConfiguration={subnets=[<subnets>],securityGroups=[<security_groups>]}'."
  value = {
    cluster = module.service.cluster_name
    task_definitions = {
      finalizer = module.service.finalizer_task_definition
      replay    = module.service.replay_task_definition
    }
    security_groups = [module.service.worker_security_group_id]
    subnets         = var.private_subnet_ids
  }
}

output "voter_claim" {
  description = "The claim both vote paths take the voter id from."
  value       = var.voter_claim
}

output "auth_domain" {
  description = "voter_registration = \"oidc\": the pool's sign-in domain prefix (empty otherwise)."
  value       = local.oidc ? aws_cognito_user_pool_domain.voters[0].domain : ""
}
