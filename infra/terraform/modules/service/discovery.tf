# The workers' addresses in DNS, for the gateway's pipeline health page
# (TALLY_WORKER_METRICS_URLS = dns+http://workers.<app>.tally.internal:9464/metrics):
# ECS registers each running worker task's address under one name, and
# removes it when the task stops. A query answers up to eight addresses
# (Cloud Map's multivalue answers), chosen at random when more workers run.

resource "aws_service_discovery_private_dns_namespace" "tally" {
  name        = "${var.app}.tally.internal"
  description = "Tally's services, inside the VPC"
  vpc         = var.vpc_id
  tags        = var.tags
}

resource "aws_service_discovery_service" "workers" {
  name = "workers"
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.tally.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  tags = var.tags
}
