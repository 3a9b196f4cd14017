"""Decoder-only distillation: data, losses, trainer, evaluation."""
