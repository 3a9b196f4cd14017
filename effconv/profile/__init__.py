"""Device profiles, per-op cost, latency estimates and backend legality lint."""
