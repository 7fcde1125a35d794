"""An amortised start for the style cloak: a small net, learned once per encoder, that turns the latent step a cloak
wants (toward its per-image target) into a first perturbation, so the per-image optimisation starts part-way.

Glaze's target differs per image (the picture style-transferred), so nothing fixed can serve it; what is learned is
the encoder's way back: given the picture's latent ``z`` and the residual ``r = t - z`` toward the target's latent,
the net draws, per latent cell, the pixel pattern that moves that cell along ``r`` (a learned, content-aware
inverse of the encoder's Jacobian). The pattern is spent inside the cloak's own budget: ``caps · tanh(net)``,
then the budget's projection (its PSNR ceiling).

    net = WarmStart(channels=32, factor=8)
    delta0 = net.start(z, t, caps)          # [B, 3, H, W], before the budget's projection
"""
from __future__ import annotations

import torch
import torch.nn as nn


class WarmStart(nn.Module):
    """``(z, r) -> pixel pattern``: two 3×3 convolutions mixing latent and residual, and a transposed convolution
    (kernel 2·factor, stride factor) that paints each latent cell's pattern with its neighbours'."""

    def __init__(self, channels: int, factor: int = 8, hidden: int = 64):
        super().__init__()
        self.channels, self.factor, self.hidden = int(channels), int(factor), int(hidden)
        self.mix = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.paint = nn.ConvTranspose2d(hidden, 3, 2 * factor, stride=factor, padding=factor // 2)

    def forward(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        scale = r.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6).view(-1, 1, 1, 1)
        zs = z.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6).view(-1, 1, 1, 1)
        return self.paint(self.mix(torch.cat([z / zs, r / scale], 1)))

    def start(self, z: torch.Tensor, t: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
        """The first perturbation for pictures of latent ``z`` toward target latent ``t`` under per-pixel ``caps``
        (``[B, 1, H, W]``; the picture's size is ``z``'s times ``factor``)."""
        p = self.forward(z.float(), (t - z).float())
        p = p[..., :caps.shape[-2], :caps.shape[-1]]
        return caps * torch.tanh(p)

    def config(self) -> dict:
        return {"channels": self.channels, "factor": self.factor, "hidden": self.hidden}


def load(path: str) -> WarmStart:
    """A net written by scripts/train_warmstart.py (safetensors with its config in the metadata), float32, eval."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not a warm-start file (no config in its metadata)")
    net = WarmStart(**json.loads(meta["config"]))
    net.load_state_dict(load_file(path))
    return net.eval().requires_grad_(False)


def for_encoder(name: str, folder: str) -> WarmStart | None:
    """The warm start trained for the encoder called ``name`` (its weights' fingerprint is in the name), from
    ``folder/<name>.safetensors``; None when there is none (the cloak then starts from zero)."""
    import os

    path = os.path.join(folder, f"{name}.safetensors")
    return load(path) if os.path.isfile(path) else None


__all__ = ["WarmStart", "load", "for_encoder"]
