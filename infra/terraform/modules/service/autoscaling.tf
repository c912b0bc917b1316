# The worker fleet follows the stream: desired workers = ceil(open shards /
# shards_per_worker), through target tracking on OpenShards (published by
# every worker, the shards not read to their end) per running worker. See
# the README for the policy and its limits.

resource "aws_appautoscaling_target" "workers" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.workers_min
  max_capacity       = var.workers_max
}

resource "aws_appautoscaling_policy" "shards_per_worker" {
  name               = "${var.app}-shards-per-worker"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.workers.service_namespace
  resource_id        = aws_appautoscaling_target.workers.resource_id
  scalable_dimension = aws_appautoscaling_target.workers.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.shards_per_worker
    scale_out_cooldown = 60
    # Scaling in moves leases: wait for a stable shard count.
    scale_in_cooldown = 300

    customized_metric_specification {
      metrics {
        id          = "shards"
        label       = "open shards"
        return_data = false
        metric_stat {
          stat = "Maximum"
          metric {
            namespace   = var.metrics_namespace
            metric_name = "OpenShards"
            dimensions {
              name  = "Application"
              value = var.app
            }
          }
        }
      }
      metrics {
        id          = "workers"
        label       = "running workers"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.worker.name
            }
          }
        }
      }
      metrics {
        id          = "per_worker"
        label       = "open shards per running worker"
        expression  = "shards / MAX([workers, 1])"
        return_data = true
      }
    }
  }
}

# The gateway fleet follows its load: target tracking on the tasks' average
# CPU and on requests per task (ALBRequestCountPerTarget), between
# gateways_min and gateways_max. Each policy asks for the larger count;
# scaling in waits for both. Results streams are long requests: they count
# once each, so a fleet serving mostly streams scales on CPU.

resource "aws_appautoscaling_target" "gateways" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.gateway.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.gateways_min
  max_capacity       = var.gateways_max
}

resource "aws_appautoscaling_policy" "gateway_cpu" {
  name               = "${var.app}-gateway-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gateways.service_namespace
  resource_id        = aws_appautoscaling_target.gateways.resource_id
  scalable_dimension = aws_appautoscaling_target.gateways.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.gateway_cpu_target
    scale_out_cooldown = 60
    # Scaling in ends results streams (clients reconnect): not too eagerly.
    scale_in_cooldown = 300
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "gateway_requests" {
  name               = "${var.app}-gateway-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gateways.service_namespace
  resource_id        = aws_appautoscaling_target.gateways.resource_id
  scalable_dimension = aws_appautoscaling_target.gateways.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.gateway_requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.gateway.arn_suffix}/${aws_lb_target_group.gateway.arn_suffix}"
    }
  }
}
