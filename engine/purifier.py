"""Diffusion purification without a checkpoint: a miniature latent diffusion model (engine/miniature.py) trained
on generic clean images over one TAE's latents, used as DiffPure's denoiser (Nie et al., ICML 2022; Hönig et al.,
ICLR 2025 defeated Glaze with noisy upscaling through SD's upscaler).

A purifier only makes sense in the latent space it was trained in: TAESD's 4 channels from the pack's toy demo
TAESD and from SD's real TAESD are different spaces. So every purifier file carries a fingerprint: the latent of
a fixed probe picture through the TAE it was trained on. :func:`find_purifier` accepts a file only when the wired
encoder gives the same latent for the probe up to one scale factor (cosine ≥ ``FINGERPRINT_MIN``: ComfyUI's VAE
wrapper of a TAE multiplies its latents by the model family's scale factor, e.g. 0.18215 for TAESD), and says why
otherwise; the purification divides that factor out and puts it back.

    found = find_purifier(member, folder)               # member: a LatentEncoder with .decode
    if found.path:
        diffuse = miniature_diffuse(member, load(found.path), found.scale)   # (pixels, strength, seed) -> pixels
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import miniature as M
from .cloak import padder

FINGERPRINT_MIN = 0.98
DDIM_STEPS = 40  # over the whole schedule; a purification at strength s runs ceil(s * 40) of them


def probe_pixels() -> torch.Tensor:
    """A fixed 64² probe picture ``[1, 3, 64, 64]``: colour ramps, a checker and a disc (every TAE sees colour,
    edges and flat areas in it)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    checker = ((torch.arange(64)[:, None] // 8 + torch.arange(64)[None] // 8) % 2).float()
    disc = (((xx - 0.6) ** 2 + (yy - 0.4) ** 2) < 0.05).float()
    rgb = torch.stack([xx, yy * (1 - disc) + disc, 0.3 + 0.4 * checker * (1 - xx)])
    return rgb.clamp(0, 1)[None]


def fingerprint(member) -> torch.Tensor:
    """The encoder's latent of the probe picture, flattened, float32 on the CPU."""
    device = getattr(member, "device", "cpu")
    with torch.no_grad():
        return member(probe_pixels().to(device)).float().flatten().cpu()


def fingerprint_metadata(member) -> dict[str, str]:
    """What :func:`engine.miniature.save` stores beside a purifier so that :func:`find_purifier` can match it."""
    fp = fingerprint(member)
    return {"fingerprint": json.dumps([round(float(v), 5) for v in fp])}


@dataclass(frozen=True)
class Found:
    """The purifier made for an encoder's latent space (``path``; None with the ``reason`` when there is none) and
    the scale of the encoder's latents relative to the purifier's."""

    path: str | None
    scale: float = 1.0
    reason: str = ""


def find_purifier(member, folder: str) -> Found:
    """The first purifier in ``folder`` made for ``member``'s latent space, or why there is none."""
    files = sorted(glob.glob(os.path.join(folder, "purifier_*.safetensors")))
    if not files:
        return Found(None, reason=f"no miniature purifier in {folder}")
    mine = fingerprint(member)
    seen = []
    for path in files:
        try:
            meta = M.read_metadata(path)
            theirs = torch.tensor(json.loads(meta["fingerprint"]), dtype=torch.float32)
        except Exception:  # an unreadable file is not a purifier: look at the next one
            continue
        if theirs.shape == mine.shape:
            sim = float(F.cosine_similarity(theirs, mine, dim=0))
            if sim >= FINGERPRINT_MIN:
                return Found(path, float(mine.norm() / theirs.norm().clamp_min(1e-12)))
            seen.append(f"{os.path.basename(path)} (probe latent cosine {sim:.2f})")
        else:
            seen.append(f"{os.path.basename(path)} ({meta.get('tae', '?')}, another latent shape)")
    return Found(None, reason="no miniature purifier for this encoder's latent space (" + ", ".join(seen)
                 + "): wire a MODEL for diffusion purification, or train one with scripts/train_purifier.py")


def miniature_diffuse(member, model: M.MiniUNet, scale: float = 1.0, steps: int = DDIM_STEPS) -> Callable:
    """``diffuse(pixels, strength, seed)`` for engine.attacks' DiffPure rows: encode with ``member`` (latents
    divided by ``scale``, :class:`Found`'s), noise to ``strength`` of the miniature's schedule and denoise with it,
    decode with ``member.decode``."""
    if getattr(member, "decode", None) is None:
        raise ValueError(f"miniature purification needs the encoder's decoder; {member.name} has none")
    multiple = member.multiple * 2 ** (model.config.levels - 1)

    def diffuse(pixels: torch.Tensor, strength: float, seed: int) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        device = model.mean.device
        with torch.no_grad():
            z = member(padder(h, w, multiple)(pixels)).float().to(device) / scale
            clean = M.purify(model, z, strength, steps=steps, seed=seed) * scale
            return member.decode(clean.to(pixels.device))[..., :h, :w].float().clamp(0, 1)

    return diffuse


__all__ = ["Found", "find_purifier", "miniature_diffuse", "fingerprint", "fingerprint_metadata", "probe_pixels",
           "FINGERPRINT_MIN"]
