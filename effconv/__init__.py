"""effconv: make a video VAE decoder run on phones (Turbo-VAED rewrite, distill, quantize, export, profile)."""

__version__ = "0.1.0"
