"""The student's layers: causal / separable 3D convs, RMSNorm ResBlocks, the decoupled 3D pixel shuffle and its upsampler."""
