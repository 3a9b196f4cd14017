"""Device profiles: their schema and loading, which unit may run which node, the runtimes' fusion rules, and host-cpu's
figures measured on this machine (with the cache that keeps them and `effconv calibrate`'s fits)."""
