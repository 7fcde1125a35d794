"""Build a small checkpoint that ComfyUI's Load Checkpoint detects as SD1.5, for tests and CPU demos.

    .host/venv/bin/python scripts/make_tiny_checkpoint.py [--out PATH] [--force]

Default output: .host/ComfyUI/models/checkpoints/cloak_tiny_sd15.safetensors (ignored, rebuilt when missing
or when BUILD changes). No download: every part comes from ComfyUI's own classes with random weights.

- UNet: comfy.supported_models.SD15 with SD1.5's detection keys (model_channels 320, context_dim 768, no
  linear-in transformer) but one level with one res block: about 25 M parameters instead of 860 M.
  ComfyUI's model_detection reads these weights back as SD15 (the builder checks that after saving).
- CLIP: SD1.5's own text encoder architecture (CLIP-L, 12 layers; ComfyUI fixes its shape for SD1.5),
  random weights. Everything is stored in fp16 (about 300 MB in all).
- VAE: the repository's trained TAESD (models/taesd), stored as a checkpoint VAE, which ComfyUI's VAE
  class recognises by its ``taesd_decoder`` keys (with SD1.5's latent scale, as VAELoader("taesd") sets it).

Random weights: images generated with it are noise-like, and any score computed on them proves that a
graph runs, not that a cloak protects.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".host", "ComfyUI")
NAME = "cloak_tiny_sd15.safetensors"
DEFAULT_OUT = os.path.join(HOST, "models", "checkpoints", NAME)
BUILD = "cloak-tiny-sd15/1"  # change when the recipe changes: existing files are then rebuilt
UNET_SHAPE = {"model_channels": 320, "context_dim": 768, "num_res_blocks": [1], "channel_mult": [1],
              "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1}


def _host_imports():
    if HOST not in sys.path:
        sys.path.insert(0, HOST)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_detection  # noqa: F401
    import comfy.sd1_clip  # noqa: F401
    import comfy.supported_models  # noqa: F401
    import comfy.utils  # noqa: F401


def _fill(module, generator) -> None:
    """Explicit init (ComfyUI's layers are left uninitialised): fan-in scaled normal weights, unit norms."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) * fan_in ** -0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in module.named_buffers():
            if b.is_floating_point() and not name.endswith("position_ids"):
                b.zero_()


def unet_state_dict(seed: int) -> tuple[dict, object]:
    import torch
    import comfy.supported_models

    unet = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "use_linear_in_transformer": False,
            "use_temporal_resblock": False, "use_temporal_attention": False, "dtype": torch.float32, **UNET_SHAPE}
    config = comfy.supported_models.SD15(unet)
    model = config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    _fill(model, gen)
    # zero the output conv of every res block and the UNet's last conv, as diffusion UNets are initialised:
    # the random model then predicts small noise instead of exploding through the sampler
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("out_layers.3.weight", "proj_out.weight")) or name.startswith("diffusion_model.out.2."):
                p.mul_(0.1)
    return model, config


def clip_state_dict(seed: int) -> dict:
    import torch
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    _fill(clip, gen)
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "embedding" in name:
                p.mul_(0.02 * p.shape[-1] ** 0.5)  # CLIP's embedding scale
    return {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}


def taesd_state_dict() -> dict:
    import torch
    import comfy.utils

    sd = {}
    for half in ("encoder", "decoder"):
        path = os.path.join(ROOT, "models", "taesd", f"taesd_{half}.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: the tiny checkpoint's VAE is the repository's trained "
                                    "TAESD (scripts/train_taesd.py makes it)")
        for k, v in comfy.utils.load_torch_file(path).items():
            sd[f"taesd_{half}.{k}"] = v
    sd["vae_scale"] = torch.tensor(0.18215)  # what VAELoader sets for "taesd" (SD1.x latent space)
    sd["vae_shift"] = torch.tensor(0.0)
    return sd


def build(out: str = DEFAULT_OUT, seed: int = 0) -> str:
    """Write the checkpoint to ``out`` (atomically) and check ComfyUI detects it as SD15; returns ``out``."""
    import torch
    import safetensors.torch

    _host_imports()
    import comfy.model_detection

    model, config = unet_state_dict(seed)
    clip_sd = clip_state_dict(seed)
    sd = model.state_dict_for_saving(clip_sd, taesd_state_dict())
    sd = {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v).contiguous() for k, v in sd.items()}
    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    if type(detected).__name__ != "SD15":
        raise RuntimeError(f"ComfyUI detects the tiny checkpoint as {type(detected).__name__}, not SD15")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    safetensors.torch.save_file(sd, tmp, metadata={"cloak_build": BUILD, "seed": str(seed),
                                                   "unet": json.dumps(UNET_SHAPE),
                                                   "note": "random weights: for tests, not for images"})
    os.replace(tmp, out)
    del model
    return out


def is_current(path: str = DEFAULT_OUT) -> bool:
    """The file exists and was made by this recipe."""
    if not os.path.isfile(path):
        return False
    try:
        import safetensors

        with safetensors.safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("cloak_build") == BUILD
    except Exception:  # a torn or foreign file: rebuild it
        return False


def ensure(path: str = DEFAULT_OUT) -> str:
    return path if is_current(path) else build(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rebuild even when the file is current")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build(args.out) if args.force else ensure(args.out)
    logging.info("tiny SD1.5 checkpoint: %s (%.0f MB)", path, os.path.getsize(path) / 2**20)


if __name__ == "__main__":
    main()
