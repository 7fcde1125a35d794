"""Full-size VAE architectures from ComfyUI's own classes, with seeded random weights: mechanics, never evidence.

    .host/venv/bin/python scripts/full_vaes.py [--arch sd15,sdxl,sd3,flux1,flux2] [--write]

Pretrained full VAEs cannot be downloaded here, so tests and bench/bench_scale.py build the architectures the
users load (ComfyUI 0.3.75's ``comfy.ldm.models.autoencoder`` classes with the configurations ``comfy.sd.VAE``
detects from a checkpoint's keys) and give them seeded random weights. A VAE built this way proves shapes, memory,
time, tiling and that every code path runs; what it encodes means nothing, so no protection figure may come from it.

- ``sd15`` / ``sdxl``: KL-f8, 4 latent channels, ``quant_conv``/``post_quant_conv`` (AutoencoderKL; SDXL's VAE has
  the same architecture as SD1.x's, only its weights differ: here a different seed);
- ``sd3`` / ``flux1``: KL-f8, 16 channels, no quant convs (AutoencodingEngine; the two share the architecture);
- ``flux2``: KL-f8 with 32 channels, quant convs and the batch-normalised 2x2-patchified latent (128 channels at
  1/16), as ComfyUI 0.3.75 builds FLUX.2's VAE.

All have SD's encoder/decoder widths (128, 256, 512, 512), two residual blocks a level and a self-attention block
in the middle (lowest resolution) of both halves: about 84 M parameters.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".host", "ComfyUI")
ARCHS = {
    "sd15": dict(z=4, quant=True, bn=False, seed=15),
    "sdxl": dict(z=4, quant=True, bn=False, seed=20),
    "sd3": dict(z=16, quant=False, bn=False, seed=3),
    "flux1": dict(z=16, quant=False, bn=False, seed=1),
    "flux2": dict(z=32, quant=True, bn=True, seed=2),
}
# what comfy.sd.VAE reports for each (latent channels, downscale ratio): the builder checks ComfyUI agrees
DETECTED = {"sd15": (4, 8), "sdxl": (4, 8), "sd3": (16, 8), "flux1": (16, 8), "flux2": (128, 16)}
BUILD = "cloak-random-vae/1"  # change when the recipe changes: written files are then rebuilt


def _host_imports():
    if HOST not in sys.path:
        sys.path.insert(0, HOST)
    import comfy.cli_args

    comfy.cli_args.args.cpu = comfy.cli_args.args.cpu or os.environ.get("CLOAK_TEST_GPU") != "1"


def ddconfig(arch: str) -> dict:
    spec = ARCHS[arch]
    config = {"double_z": True, "z_channels": spec["z"], "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    if spec["bn"]:
        config["batch_norm_latent"] = True
    return config


def build_model(arch: str, seed: int | None = None):
    """The architecture as a torch module (float32) with seeded random weights (ComfyUI leaves its layers
    uninitialised): fan-in scaled normal weights, unit norms, zero biases; the last conv of each residual block
    and each attention block's output scaled by 0.2, so activations stay in range through the ~30 blocks."""
    if arch not in ARCHS:
        raise ValueError(f"unknown VAE architecture {arch!r}; choose one of {list(ARCHS)}")
    import torch

    _host_imports()
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    spec, config = ARCHS[arch], ddconfig(arch)
    if spec["quant"]:
        model = AutoencoderKL(ddconfig=config, embed_dim=spec["z"])
    else:
        model = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": config},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": config})
    gen = torch.Generator().manual_seed(spec["seed"] if seed is None else seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
                if name.endswith(("conv2.weight", "proj_out.weight")):
                    p.mul_(0.2)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif b.is_floating_point():
                b.zero_()
    return model.eval()


def state_dict(arch: str, seed: int | None = None, half: bool = True) -> dict:
    """The checkpoint-style state dict ComfyUI's ``comfy.sd.VAE(sd=...)`` and VAELoader read."""
    sd = build_model(arch, seed).state_dict()
    return {k: (v.half() if half and v.is_floating_point() and v.ndim > 0 else v).contiguous() for k, v in sd.items()}


def build_vae(arch: str, seed: int | None = None):
    """A ``comfy.sd.VAE`` of ``arch``, as Load Checkpoint or VAE Loader would give it (checked against DETECTED)."""
    _host_imports()
    import comfy.sd

    vae = comfy.sd.VAE(sd=state_dict(arch, seed))
    got = (vae.latent_channels, vae.downscale_ratio)
    if got != DETECTED[arch]:
        raise RuntimeError(f"ComfyUI reads the {arch} build as {got} (latent channels, downscale), not "
                           f"{DETECTED[arch]}")
    return vae


def file_name(arch: str) -> str:
    return f"cloak_random_{arch}_vae.safetensors"


def ensure_file(arch: str, folder: str | None = None) -> str:
    """``models/vae/cloak_random_<arch>_vae.safetensors`` in the host (fp16, ~170 MB), for VAE Loader and
    LoadVAEEncoder's vae_name; written when missing or built by another recipe. Returns its path."""
    import safetensors
    import safetensors.torch

    folder = folder or os.path.join(HOST, "models", "vae")
    path = os.path.join(folder, file_name(arch))
    if os.path.isfile(path):
        with safetensors.safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("cloak_build") == BUILD:
                return path
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    safetensors.torch.save_file(state_dict(arch), tmp, metadata={"cloak_build": BUILD, "arch": arch,
                                                                 "note": "random weights: mechanics only"})
    os.replace(tmp, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--write", action="store_true", help="write the files into the host's models/vae")
    args = ap.parse_args()
    for arch in args.arch.split(","):
        vae = build_vae(arch)
        params = sum(p.numel() for p in vae.first_stage_model.parameters())
        where = ensure_file(arch) if args.write else "(not written)"
        print(f"{arch}: {type(vae.first_stage_model).__name__}, {params / 1e6:.1f} M parameters, latent channels "
              f"{vae.latent_channels}, downscale {vae.downscale_ratio} {where}")


if __name__ == "__main__":
    main()
