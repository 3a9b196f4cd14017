"""Regenerate the Turbo-VAED reference fixtures in this folder from the authors' own model class.

This script contains none of the authors' code: it imports ``AutoencoderKLTurboVAED`` from a scratch checkout of
hustvl/Turbo-VAED (their diffusers fork, ``diffusers_vae/src``) given on the command line, builds tiny decoders
with seeded random weights, saves them with the authors' ``save_pretrained`` and records ``model.decode(latent)``.
It also records the decoder state_dict of the four released configurations. See README.md for the exact command.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--turbo-vaed-src", required=True, help="path to hustvl/Turbo-VAED's diffusers_vae/src (scratch)")
    p.add_argument("--configs", required=True, help="path to hustvl/Turbo-VAED's configs/ folder")
    p.add_argument("--commit", required=True, help="hustvl/Turbo-VAED commit the two paths above come from")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    return p.parse_args()


# Widths are scaled down from the first plan so that the folder stays small (see README); the other keys are as planned.
HUNYUAN_LIKE = {
    "latent_channels": 4,
    "decoder_block_out_channels": [4, 4, 8, 8],
    "decoder_layers_per_block": [2, 1, 1, 1, 2],
    "spatio_temporal_scaling": [True, True, True, False],
    "decoder_spatio_only": [True, False, False, False],
    "decoder_is_dw_conv": [False, False, False, True, True],
    "decoder_dw_kernel_size": 5,
    "patch_size": 1,
    "decoder_causal": False,
    "aligned_feature_projection_mode": "conv-2layer",
    "aligned_feature_projection_dim": [[8, 16]],
    "aligned_blks_indices": [1],
}
LTX_LIKE = {
    "latent_channels": 8,
    # The output end (the first entry) is 64 wide, so that 4 channels are left after the 4x4 depth-to-space, as in the
    # released LTX student: an RMSNorm over 1 channel is a sign function, ill-conditioned to compare decodes with. It
    # neither upsamples nor is dense, which keeps the file small; its width change exercises a separable shortcut.
    "decoder_block_out_channels": [64, 8, 8, 8],
    "decoder_layers_per_block": [1, 1, 1, 1, 1],
    "spatio_temporal_scaling": [True, True, True, False],
    "decoder_spatio_temporal_scaling": [False, True, True, False],
    "decoder_is_dw_conv": [True, False, False, True, True],
    "decoder_dw_kernel_size": 5,
    "patch_size": 4,
    "decoder_causal": False,
    "aligned_feature_projection_mode": "conv-2layer",
    "aligned_feature_projection_dim": [[8, 16]],
    "aligned_blks_indices": [2],
}
PATCH2 = {k: v for k, v in LTX_LIKE.items() if not k.startswith("aligned_")}
PATCH2.update(patch_size=2, decoder_block_out_channels=[16, 8, 8, 8])
DC_LIKE = dict(LTX_LIKE, is_video_dc_ae=True, aligned_feature_projection_dim=[[8, 16], [8, 16], [8, 16]],
               aligned_blks_indices=[0, 1, 2])
DW_SHORTCUT = dict(HUNYUAN_LIKE, decoder_block_out_channels=[4, 4, 6, 8],
                   decoder_is_dw_conv=[False, False, True, True, True])
for k in ("aligned_feature_projection_mode", "aligned_feature_projection_dim", "aligned_blks_indices"):
    DW_SHORTCUT.pop(k)
CAUSAL_DENSE = dict(DW_SHORTCUT, decoder_block_out_channels=[4, 4, 8, 8], decoder_causal=True,
                    decoder_is_dw_conv=[False] * 5)

# name: (config, seed, latent (frames, height, width) list; the first is latent.npy/video.npy, the second *_2.npy)
FIXTURES = {
    "hunyuan-like": (HUNYUAN_LIKE, 1, [(3, 4, 4), (2, 4, 4)]),
    "dw-shortcut": (DW_SHORTCUT, 2, [(3, 4, 4)]),
    "ltx-like": (LTX_LIKE, 3, [(3, 2, 2)]),
    "patch2": (PATCH2, 4, [(3, 2, 3)]),
    "causal-dense": (CAUSAL_DENSE, 5, [(3, 4, 4)]),
    "dc-like": (DC_LIKE, 6, [(3, 2, 2)]),
}


def randomize(model, seed):
    """Set every parameter to a seeded random value (no zero biases, no unit norm weights)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    owner = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = mod
    with torch.no_grad():
        for name, p in model.named_parameters():
            mod = owner[name]
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and leaf == "weight":
                fan_in = p.shape[1] * math.prod(p.shape[2:])
                p.copy_(r / math.sqrt(fan_in))
            elif isinstance(mod, nn.LayerNorm) and leaf == "weight":
                p.copy_(1.0 + 0.1 * r)
            elif leaf == "bias":
                p.copy_(0.1 * r)
            else:
                raise RuntimeError(f"no init rule for {name} ({type(mod).__name__})")
        # decode() never reads these buffers; random values make a loader that applies them fail the comparison.
        model.latents_mean.copy_(0.1 * torch.randn(model.latents_mean.shape, generator=g))
        model.latents_std.copy_(1.0 + 0.1 * torch.randn(model.latents_std.shape, generator=g).abs())
    for name, p in model.named_parameters():
        assert p.abs().min() > 0 and (p - 1).abs().min() > 0, name


def make_fixture(cls, name, cfg, seed, latents, out):
    import torch

    torch.manual_seed(seed)
    model = cls(**cfg).eval()
    randomize(model, seed)
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(str(d))
    reloaded = cls.from_pretrained(str(d)).eval()
    info = {"config": name, "params": sum(p.numel() for p in model.parameters())}
    g = torch.Generator().manual_seed(1000 + seed)
    for i, (t, h, w) in enumerate(latents):
        z = torch.randn((1, cfg["latent_channels"], t, h, w), generator=g, dtype=torch.float32)
        with torch.no_grad():
            video = model.decode(z).sample
            again = reloaded.decode(z).sample
        assert torch.equal(video, again), f"{name}: save_pretrained/from_pretrained round trip changed the output"
        assert torch.isfinite(video).all()
        suffix = "" if i == 0 else f"_{i + 1}"
        np.save(d / f"latent{suffix}.npy", z.numpy())
        np.save(d / f"video{suffix}.npy", video.numpy().astype(np.float32))
        info[f"video{suffix}"] = {"latent": list(z.shape), "video": list(video.shape),
                                  "std": round(float(video.std()), 4), "absmax": round(float(video.abs().max()), 4)}
    return info


def released_params(cls, configs_dir, commit):
    import torch

    result = {}
    for variant in ("Hunyuan", "Cog", "LTX", "DC"):
        path = Path(configs_dir) / f"Turbo-VAED-{variant}.json"
        config = json.loads(path.read_text())
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        torch.manual_seed(0)
        model = cls(**kwargs)
        decoder = {k: list(v.shape) for k, v in model.decoder.state_dict().items()}
        other, other_keys = {}, {}
        for k, v in model.state_dict().items():
            if k.startswith("decoder."):
                continue
            top = k.split(".", 1)[0]
            other[top] = other.get(top, 0) + v.numel()
            other_keys[k] = list(v.shape)
        result[variant] = {
            "source": f"hustvl/Turbo-VAED configs/Turbo-VAED-{variant}.json @ {commit}",
            "config": config,
            "decoder": decoder,
            "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
            "other": other,
            "other_keys": other_keys,
        }
        del model
    return result


def main():
    args = parse_args()
    sys.path.insert(0, str(Path(args.turbo_vaed_src).resolve()))
    import torch
    from diffusers.models.autoencoders import autoencoder_kl_turbo_vaed

    src = Path(args.turbo_vaed_src).resolve()
    assert Path(autoencoder_kl_turbo_vaed.__file__).resolve().is_relative_to(src), "installed diffusers shadows the fork"
    cls = autoencoder_kl_turbo_vaed.AutoencoderKLTurboVAED
    torch.set_num_threads(1)
    out = Path(args.out)
    for name, (cfg, seed, latents) in FIXTURES.items():
        print(json.dumps(make_fixture(cls, name, cfg, seed, latents, out)))
    params = released_params(cls, args.configs, args.commit)
    (out / "released_params.json").write_text(json.dumps(params, indent=1) + "\n")
    for v, r in params.items():
        print(v, "decoder_params", r["decoder_params"], "other", r["other"])


if __name__ == "__main__":
    main()
