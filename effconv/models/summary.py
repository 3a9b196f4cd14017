"""What `effconv inspect` reports about a model part."""

from __future__ import annotations

from effconv.models.loader import LoadedModel


def summarize(model: LoadedModel) -> dict:
    compression = model.compression
    return {
        "name": model.spec.spec.name,
        "class": type(model.model).__name__,
        "family": model.adapter.family,
        "part": model.part,
        "params": model.num_params(),
        "blocks": model.block_params(),
        "compression": compression.as_dict(),
        "input": {"name": model.input_name, "shape": list(model.input_shape)},
        "output": {"name": model.output_name, "shape": list(model.output_shape)},
        "backends": dict(model.adapter.known_backends),
    }
