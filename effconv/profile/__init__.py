"""Profiling: device profiles, per-op cost (FLOPs, bytes), backend legality lint, latency estimates, host measurement, calibration."""
