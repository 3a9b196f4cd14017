"""`effconv calibrate`: the host-cpu latency model fitted per runtime on decoders measured on this machine."""
