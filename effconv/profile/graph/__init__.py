"""The op-cost vocabulary (FLOPs, bytes, compute dtype per node) and the readers that cost each artifact's graph."""
