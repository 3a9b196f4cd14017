"""What each backend's compute units can run (lint rules as data in `rules/`), and the lossless graph rewrites that make a torch.export graph runnable there."""
