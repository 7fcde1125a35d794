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


def change_by_region(original: torch.Tensor, cloaked: torch.Tensor, window: int = 7, flat_below: float = 0.01,
                     textured_above: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute change per pixel in flat and in textured regions, ``([B], [B])`` (NaN where none).

    A pixel is *flat* where the local standard deviation of luminance over a ``window``² box is below
    ``flat_below`` (about 2.5 of 255 levels: flat colour, smooth backgrounds) and *textured* above
    ``textured_above`` (10 levels). The visible-artefact question of Glaze and Nightshade is the first number.
    """
    y = kornia.color.rgb_to_grayscale(original.float())
    mean = kornia.filters.box_blur(y, (window, window), border_type="reflect")
    std = (kornia.filters.box_blur(y * y, (window, window), border_type="reflect") - mean * mean).clamp_min(0).sqrt()
    change = (cloaked.float() - original.float()).abs().mean(1, keepdim=True)

    def masked_mean(mask):
        m = mask.float()
        return (change * m).flatten(1).sum(1) / m.flatten(1).sum(1)  # NaN when the mask is empty

    return masked_mean(std < flat_below), masked_mean(std > textured_above)
