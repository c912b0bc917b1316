output "cluster_name" {
  value = aws_ecs_cluster.this.name
}

output "worker_service" {
  value = aws_ecs_service.worker.name
}

output "gateway_service" {
  value = aws_ecs_service.gateway.name
}

output "alb_arn" {
  value = aws_lb.gateway.arn
}

output "alb_arn_suffix" {
  value = aws_lb.gateway.arn_suffix
}

output "alb_dns_name" {
  description = "The CloudFront distribution's origin."
  value       = aws_lb.gateway.dns_name
}

output "finalizer_role_arn" {
  description = "Task role for `tally finalize` runs."
  value       = aws_iam_role.finalizer.arn
}

output "finalizer_task_definition" {
  description = "Run with the command overridden: [\"finalize\", \"<poll>\"]."
  value       = aws_ecs_task_definition.finalizer.arn
}

output "replay_task_definition" {
  description = "Run with the command overridden: [\"replay\", \"<poll>\", \"--from\", \"votes\", \"--shadow-prefix\", \"<app>-replay-<n>-\"]."
  value       = aws_ecs_task_definition.replay.arn
}

output "worker_security_group_id" {
  description = "For one-off finalizer and replay runs (HTTPS out)."
  value       = aws_security_group.worker.id
}
