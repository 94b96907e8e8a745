"""What operators watch: the access log and the Prometheus metrics."""
