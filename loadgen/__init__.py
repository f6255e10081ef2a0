"""Load generation for benchmarks: drivers for wrk (closed-loop capacity) and for
nginx as the reference proxy. The open-loop generator (latency from scheduled
send times, no coordinated omission) comes with the load generator issue."""
