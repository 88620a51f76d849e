"""Speed measurement: latency, FLOPs, memory and the machine's limit."""
