"""The latency estimate: where each node runs, which ops run as one kernel, the per-op roofline and its band."""
