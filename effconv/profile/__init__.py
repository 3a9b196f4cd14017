"""Profiling: device profiles, per-op cost (FLOPs, bytes), latency estimates, host measurement, calibration."""
