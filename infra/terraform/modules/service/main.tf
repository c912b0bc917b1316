# The ECS/Fargate cluster, the worker and gateway services, the gateway's
# load balancer, and the worker fleet's autoscaling on the stream's shards.

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/tally/${var.app}/worker"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "gateway" {
  name              = "/tally/${var.app}/gateway"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_ecs_cluster" "this" {
  name = var.app
  setting {
    name  = "containerInsights"
    value = "enabled" # RunningTaskCount feeds the worker autoscaling.
  }
  tags = var.tags
}

locals {
  # The gateway's /metrics listener (in-VPC scraping only).
  gateway_metrics_port = 9465
  # The worker's /health and /metrics listener (TALLY_HEALTH_ADDR): the
  # container's health check, and the gateway's pipeline health page.
  worker_metrics_port = 9464
  # Every running worker's address, from Cloud Map (discovery.tf): the
  # gateway expands the name to one URL per address.
  worker_metrics_urls = "dns+http://${aws_service_discovery_service.workers.name}.${aws_service_discovery_private_dns_namespace.tally.name}:${local.worker_metrics_port}/metrics"
  common_environment = [
    { name = "TALLY_STREAM", value = var.stream_name },
    { name = "TALLY_APP", value = var.app },
    { name = "TALLY_TABLE_PREFIX", value = var.table_prefix },
    { name = "TALLY_CLOUDWATCH", value = "true" },
    { name = "TALLY_CLOUDWATCH_NAMESPACE", value = var.metrics_namespace },
    { name = "AWS_REGION", value = var.region },
  ]
  container_defaults = {
    essential              = true
    readonlyRootFilesystem = true
    privileged             = false
    user                   = "10001:10001"
    # ECS sends SIGTERM, then SIGKILL after this: the worker finishes its
    # batches and releases its leases within 20 s (TALLY_SHUTDOWN_TIMEOUT_MS).
    stopTimeout = 30
  }
}

resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.app}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.worker.arn
  container_definitions = jsonencode([merge(local.container_defaults, {
    name        = "worker"
    image       = var.image
    command     = ["worker"]
    environment = concat(local.common_environment, [{ name = "TALLY_HEALTH_ADDR", value = "0.0.0.0:${local.worker_metrics_port}" }])
    portMappings = [
      { containerPort = local.worker_metrics_port, protocol = "tcp" },
    ]
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/tally", "probe", "http://127.0.0.1:${local.worker_metrics_port}/health"]
      interval    = 15
      timeout     = 3
      retries     = 3
      startPeriod = 20
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.worker.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "worker"
      }
    }
  })])
  tags = var.tags
}

resource "aws_ecs_task_definition" "gateway" {
  family                   = "${var.app}-gateway"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.gateway_cpu
  memory                   = var.gateway_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.gateway.arn
  container_definitions = jsonencode([merge(local.container_defaults, {
    name    = "gateway"
    image   = var.image
    command = ["gateway"]
    environment = concat(local.common_environment, [
      { name = "TALLY_GATEWAY_ADDR", value = "0.0.0.0:8080" },
      { name = "TALLY_AUTH_JWKS_URL", value = var.auth_jwks_url },
      { name = "TALLY_AUTH_ISSUER", value = var.auth_issuer },
      { name = "TALLY_AUTH_AUDIENCE", value = var.auth_audience },
      { name = "TALLY_AUTH_ROLE_CLAIM", value = "cognito:groups" },
      { name = "TALLY_AUTH_ADMIN_ROLE", value = var.auth_admin_role },
      { name = "TALLY_AUTH_VOTER_CLAIM", value = var.auth_voter_claim },
      # /metrics only on its own listener, which the load balancer cannot
      # reach (the security group below opens 8080 to it, not this port).
      { name = "TALLY_GATEWAY_METRICS_ADDR", value = "0.0.0.0:${local.gateway_metrics_port}" },
      # The last X-Forwarded-For entry is the viewer's address: CloudFront
      # appends it, and the load balancer keeps the header as it is.
      { name = "TALLY_TRUST_FORWARDED_FOR", value = "true" },
      { name = "TALLY_CORS_ORIGINS", value = join(",", var.cors_origins) },
      # The admin page's pipeline health reads every worker's /metrics.
      { name = "TALLY_WORKER_METRICS_URLS", value = local.worker_metrics_urls },
    ])
    portMappings = [
      { containerPort = 8080, protocol = "tcp" },
      { containerPort = local.gateway_metrics_port, protocol = "tcp" },
    ]
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/tally", "probe", "http://127.0.0.1:8080/healthz"]
      interval    = 15
      timeout     = 3
      retries     = 3
      startPeriod = 10
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.gateway.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "gateway"
      }
    }
  })])
  tags = var.tags
}

# One-off runs of the operator's commands on the live tables (the runbooks
# in ops/runbooks): `tally finalize`, `resolve`, `audit`, `snapshot`,
# `poll`, `leases`, `results` and `vote-status`. Run this task with the
# command overridden, e.g. ["finalize", "<poll>"]. `tally replay` has a task
# of its own (below), whose role may create tables.
resource "aws_ecs_task_definition" "finalizer" {
  family                   = "${var.app}-finalizer"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.finalizer.arn
  container_definitions = jsonencode([merge(local.container_defaults, {
    name    = "finalizer"
    image   = var.image
    command = ["finalize", "--help"]
    environment = concat(local.common_environment, [
      { name = "TALLY_SNAPSHOT_BUCKET", value = var.snapshot_bucket },
    ])
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.worker.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "finalizer"
      }
    }
  })])
  tags = var.tags
}

# One-off runs of `tally replay` (ops/runbooks/recount.md, restore.md):
# run with the command overridden, e.g. ["replay", "<poll>", "--from",
# "votes", "--shadow-prefix", "<app>-replay-1-"]. Its role reads the live
# tables and creates and writes only tables named <app>-replay-* and
# <app>-restored-* (var.replay_table_arns).
resource "aws_ecs_task_definition" "replay" {
  family                   = "${var.app}-replay"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.replay.arn
  container_definitions = jsonencode([merge(local.container_defaults, {
    name        = "replay"
    image       = var.image
    command     = ["replay", "--help"]
    environment = local.common_environment
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.worker.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "replay"
      }
    }
  })])
  tags = var.tags
}

# Only the CloudFront distribution reaches the load balancer, twice over:
# - its security group admits CloudFront's origin-facing addresses only
#   (the managed prefix list), so nothing else on the internet can open a
#   connection;
# - its listener forwards only requests carrying the distribution's secret
#   header (origin_header_name, set on the distribution's origins), and
#   answers anything else with a 403, so another distribution, which comes
#   from the same addresses, cannot reach the gateway around this one's WAF
#   rules and caching.
# Both are needed because the gateway takes the client's address from the
# last X-Forwarded-For entry, which the load balancer leaves as CloudFront
# wrote it (xff_header_processing_mode below): only a request that came
# through this distribution may be trusted with it. (A CloudFront VPC
# origin would close the internet path altogether, but it needs the load
# balancer internal, in private subnets: a replacement of the load
# balancer, left for a later change.) Clients that called the load
# balancer directly go through the distribution's URL now.
data "aws_ec2_managed_prefix_list" "cloudfront" {
  name = "com.amazonaws.global.cloudfront.origin-facing"
}

resource "aws_security_group" "alb" {
  name        = "${var.app}-alb"
  description = "The gateway's load balancer: HTTPS from CloudFront"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from CloudFront's origin-facing addresses"
  prefix_list_id    = data.aws_ec2_managed_prefix_list.cloudfront.id
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "alb_to_gateway" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the gateway tasks"
  referenced_security_group_id = aws_security_group.gateway.id
  from_port                    = 8080
  to_port                      = 8080
  ip_protocol                  = "tcp"
}

resource "aws_security_group" "gateway" {
  name        = "${var.app}-gateway"
  description = "Gateway tasks: from the load balancer, to AWS APIs"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "gateway_from_alb" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  from_port                    = 8080
  to_port                      = 8080
  ip_protocol                  = "tcp"
}

# /metrics (TALLY_GATEWAY_METRICS_ADDR) from the scrapers named by the
# operator only; never from the load balancer.
resource "aws_vpc_security_group_ingress_rule" "gateway_metrics" {
  for_each                     = toset(var.metrics_scraper_security_group_ids)
  security_group_id            = aws_security_group.gateway.id
  description                  = "Metrics scraping from inside the VPC"
  referenced_security_group_id = each.value
  from_port                    = local.gateway_metrics_port
  to_port                      = local.gateway_metrics_port
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "gateway_https" {
  security_group_id = aws_security_group.gateway.id
  description       = "AWS APIs (Kinesis, DynamoDB, CloudWatch) and the key set over HTTPS"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

# The admin page's pipeline health: the gateway reads the workers' /metrics.
resource "aws_vpc_security_group_egress_rule" "gateway_to_worker_metrics" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "The workers' /metrics (pipeline health)"
  referenced_security_group_id = aws_security_group.worker.id
  from_port                    = local.worker_metrics_port
  to_port                      = local.worker_metrics_port
  ip_protocol                  = "tcp"
}

resource "aws_security_group" "worker" {
  name = "${var.app}-worker"
  # Kept as first written: a new description would replace the group.
  # The workers admit /metrics from the gateways (the rule below).
  description = "Worker tasks: no ingress, AWS APIs only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "worker_metrics_from_gateway" {
  security_group_id            = aws_security_group.worker.id
  description                  = "/metrics from the gateway (pipeline health)"
  referenced_security_group_id = aws_security_group.gateway.id
  from_port                    = local.worker_metrics_port
  to_port                      = local.worker_metrics_port
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "worker_https" {
  security_group_id = aws_security_group.worker.id
  description       = "AWS APIs (Kinesis, DynamoDB, CloudWatch) over HTTPS"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

resource "aws_lb" "gateway" {
  #checkov:skip=CKV2_AWS_28:it admits only the CloudFront distribution, whose CLOUDFRONT-scope web ACL (modules/waf, from modules/tally) sees every request with the viewer's address; a regional ACL here would see CloudFront's addresses only
  name                       = "${var.app}-gateway"
  load_balancer_type         = "application"
  internal                   = false # CloudFront reaches it over the internet
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  # CloudFront appends the viewer's address to X-Forwarded-For; the load
  # balancer leaves the header as it is instead of appending CloudFront's
  # own address, so the gateway's "last entry" (TALLY_TRUST_FORWARDED_FOR)
  # is the viewer, not an edge server.
  xff_header_processing_mode = "preserve"
  enable_deletion_protection = var.deletion_protection
  access_logs {
    bucket  = var.alb_logs_bucket
    prefix  = "${var.app}-gateway"
    enabled = true
  }
  tags = var.tags
}

resource "aws_lb_target_group" "gateway" {
  #checkov:skip=CKV_AWS_378:TLS ends at the HTTPS listener, whose rule from_cdn forwards here (checkov follows only a listener's default action); the tasks are in private subnets
  name        = "${var.app}-gateway"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # Long-lived results streams: give them time to end on deploys.
  deregistration_delay = 30
  health_check {
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  tags = var.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  # Anything that did not come through the distribution (see the security
  # group above): refused.
  default_action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      status_code  = "403"
      message_body = jsonencode({ error = { code = "forbidden", message = "use the public address" } })
    }
  }
  tags = var.tags
}

resource "aws_lb_listener_rule" "from_cdn" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 10
  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
  condition {
    http_header {
      http_header_name = var.origin_header_name
      values           = [var.origin_secret]
    }
  }
  tags = var.tags
}

# Defence in depth: the gateway serves /metrics on its own listener only
# (TALLY_GATEWAY_METRICS_ADDR), the distribution answers /metrics* at the
# edge, and the load balancer answers any /metrics path itself, before the
# rule that forwards the distribution's requests (priority 1 < 10).
resource "aws_lb_listener_rule" "no_metrics" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 1
  action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = jsonencode({ error = { code = "not_found", message = "no such route" } })
    }
  }
  condition {
    path_pattern {
      values = ["/metrics*"]
    }
  }
  tags = var.tags
}

resource "aws_ecs_service" "gateway" {
  name            = "gateway"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.gateway.arn
  desired_count   = var.gateways_min
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.gateway.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.gateway.arn
    container_name   = "gateway"
    container_port   = 8080
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  propagate_tags = "SERVICE"
  tags           = var.tags
  lifecycle {
    ignore_changes = [desired_count] # owned by the autoscaling (autoscaling.tf)
  }
}

resource "aws_ecs_service" "worker" {
  name            = "worker"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker.arn
  desired_count   = var.workers_min
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }
  # Each task's address under the workers' Cloud Map name (discovery.tf).
  service_registries {
    registry_arn = aws_service_discovery_service.workers.arn
  }
  # Replace workers gradually: leases move to the survivors in seconds.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 150
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  propagate_tags = "SERVICE"
  tags           = var.tags
  lifecycle {
    ignore_changes = [desired_count] # owned by the autoscaling below
  }
}
