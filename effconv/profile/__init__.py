"""Profiling: per-op cost, device profiles, latency estimates, measurement on this machine, host calibration.

Layers, each importing only from the layers listed before it:
- graph/: the op-cost vocabulary (FLOPs, bytes, dtype per node) and the readers that cost each artifact's graph;
- device/: device profiles (schema, loading, legality per unit, fusion rules) and host-cpu's measured figures;
- estimate/: where each node runs, which ops run as one kernel, the per-op roofline, and the int8 choices made with it;
- fit/: `effconv calibrate`, the host-cpu estimate fitted per runtime on decoders measured here;
- run.py (the `effconv profile` stage), measure.py (artifacts timed in their own runtime), plot.py (--plot).
"""
