//! Prometheus metrics of the daemon (prefix `claude_failover_`).
