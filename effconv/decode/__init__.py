"""Streaming decode on the host: a latent of any length through a streaming artifact, chunk by chunk."""
