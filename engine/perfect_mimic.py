"""The report's perfect-mimic readout: what a model trained through this encoder on the output would draw.

A latent diffusion model (or a LoRA) fine-tuned on cloaked images learns their latents ``E(x')``; one that learns
them perfectly draws ``D(E(x'))``, the decoded cloaked latent. So, for an encoder that carries its decoder, each
report line says how far that picture moved from ``D(E(x))`` (what a perfect mimic of the original draws) toward
``D(t)`` (the decoded target: the style-transferred image's latent for GlazePerturb, the anchor's for
NightshadePoison), measured in engine/style_score.py's *pixel* style statistics (colour moments and filter-bank
Gram matrices), a measure the cloak was not made against:

    share = d(D(E(x')), D(E(x))) / (d(D(E(x')), D(E(x))) + d(D(E(x')), D(t)))

0: a perfect mimic draws what it draws from the original; 1: it draws the target; above 0.5 it reads nearer the
target (for a poison: nearer concept B than A). It is a screen, not the judge: bench/bench_mimicry.py trains
models (README, "What has been shown, and what has not"). Pixels ``[1, 3, H, W]`` padded to the encoder's
multiple; ``size`` the original ``(H, W)``.
"""
from __future__ import annotations

import math

import torch

from .objectives import decode_in_tiles
from .style_score import SAME_STYLE, pixel_style_features, placement

# a decoded target whose pixel style statistics lie this close (relative) to the original's leaves no gap to measure
# (the style score's own "same style" share, where it refuses)
MIN_RELATIVE_GAP = SAME_STYLE


def readout(member, original_latent: torch.Tensor, cloaked_padded: torch.Tensor, target_latent: torch.Tensor,
            size: tuple[int, int], decoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict | None:
    """``{"mimic_share", "mimic_to_original", "mimic_to_target"}`` for one image through ``member`` (an ensemble
    member with ``decode``; a tiled view is fine), or None when it has no decoder. Distances are in units of the
    original-to-target gap; ``mimic_share`` is NaN when the gap is too small to measure. ``decoded``: the pictures
    ``(D(original_latent), D(target_latent))`` where the caller already has them (calibration decodes both), so
    only the cloaked latent is decoded here."""
    decode = getattr(member, "decode", None)
    if decode is None:
        return None
    h, w = int(size[0]), int(size[1])
    with torch.no_grad():
        z1 = member(cloaked_padded)
        known = {} if decoded is None else {0: decoded[0], 2: decoded[1]}
        pictures = [(known[i] if i in known else decode_in_tiles(decode, z.to(z1.device)))[..., :h, :w].float()
                    .clamp(0, 1).cpu() for i, z in enumerate((original_latent, z1, target_latent))]
    f0, f1, ft = (pixel_style_features(p)[0] for p in pictures)
    gap = float((f0 - ft).norm())
    if not math.isfinite(gap) or gap <= MIN_RELATIVE_GAP * max(float(f0.norm()), 1e-12):
        return {"mimic_share": float("nan"), "mimic_to_original": float("nan"), "mimic_to_target": float("nan")}
    where = placement(f0, ft, f1)  # the original's picture as the "artist", the decoded target as the target
    return {"mimic_share": where["target_share"], "mimic_to_original": where["to_artist"],
            "mimic_to_target": where["to_target"]}


def decoder_member(encoder) -> int | None:
    """The index of the first ensemble member that carries its decoder (None: none does)."""
    return next((k for k, m in enumerate(encoder.members) if getattr(m, "decode", None) is not None), None)


__all__ = ["readout", "decoder_member", "MIN_RELATIVE_GAP"]
