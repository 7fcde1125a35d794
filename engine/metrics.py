"""Metrics: PSNR, SSIM (kornia) and target gain. Pixels ``[B, 3, H, W]`` in 0..1; each returns ``[B]``."""
from __future__ import annotations

import kornia
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    return kornia.metrics.ssim(a.float(), b.float(), window).flatten(1).mean(1)


def target_gain(d_original: torch.Tensor, d_cloaked: torch.Tensor) -> torch.Tensor:
    """``1 - ||E(x') - t|| / ||E(x) - t||``: 0 = no move toward the target, 1 = reached it, <0 = moved away.

    Inputs are distances ``[B]`` or ``[B, M]`` (one column per ensemble member; the mean is returned).
    """
    g = 1 - d_cloaked / d_original.clamp_min(1e-12)
    return g.mean(1) if g.ndim == 2 else g
