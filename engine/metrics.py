"""Metrics: PSNR, SSIM (kornia), HaarPSI and GMSD (piq), the change's low-frequency share and target gain.
Pixels ``[B, 3, H, W]`` in 0..1; each returns ``[B]``.

HaarPSI (Reisenhofer et al. 2018; 1 = identical, lower = more visible) and GMSD (Xue et al. 2014; 0 = identical,
higher = more visible) are full-reference measures of what a person sees that need no downloaded weights; PSNR
counts every changed level alike, so two changes of one PSNR can differ in visibility (a smooth mottle against fine
grain). They come from ``piq`` (listed in requirements.txt), a maintained library of differentiable image measures.
"""
from __future__ import annotations

import kornia
import piq
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    return kornia.metrics.ssim(a.float(), b.float(), window).flatten(1).mean(1)


def haarpsi(a: torch.Tensor, b: torch.Tensor, subsample: bool = True) -> torch.Tensor:
    """HaarPSI of ``a`` against ``b`` (``piq.haarpsi``, its own defaults; 1 = identical). Differentiable.
    ``subsample=False``: without piq's 2×2 averaging first, so the change at the pixel level counts too."""
    a, b = a.float().clamp(0, 1), b.float().clamp(0, 1)
    # piq divides by the sum of its weights, which is 0 for two all-black pictures (no Haar response anywhere, not
    # even at the zero-padded border): inf, and NaN in the gradient. Such a pair is identical: 1, without piq.
    live = (a.flatten(1).amax(1) > 0) | (b.flatten(1).amax(1) > 0)
    if bool(live.all()):
        return piq.haarpsi(a, b, data_range=1.0, reduction="none", subsample=subsample)
    seen = torch.ones(a.shape[0], device=a.device)
    if bool(live.any()):
        seen[live] = piq.haarpsi(a[live], b[live], data_range=1.0, reduction="none", subsample=subsample)
    return seen


def gmsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gradient-magnitude similarity deviation of ``a`` against ``b`` (``piq.gmsd``; 0 = identical). Differentiable."""
    return piq.gmsd(a.float().clamp(0, 1), b.float().clamp(0, 1), data_range=1.0, reduction="none")


def low_frequency_share(original: torch.Tensor, changed: torch.Tensor, box: int = 5) -> torch.Tensor:
    """Energy of a ``box``² box blur of the change over the change's energy (0..1): how much of the change is smooth
    blotches rather than fine grain (Gaussian noise ~0.04, plain PGD ~0.13; what mottles a smooth sky is the rest)."""
    d = changed.float() - original.float()
    low = kornia.filters.box_blur(d, (box, box), border_type="reflect")
    return low.pow(2).flatten(1).sum(1) / d.pow(2).flatten(1).sum(1).clamp_min(1e-20)


def visibility(original: torch.Tensor, changed: torch.Tensor) -> dict[str, list[float]]:
    """Per image, what a person would see of the change: ``haarpsi``, ``gmsd`` and ``low_freq`` (lists of floats)."""
    with torch.no_grad():
        return {"haarpsi": [float(v) for v in haarpsi(changed, original)],
                "gmsd": [float(v) for v in gmsd(changed, original)],
                "low_freq": [float(v) for v in low_frequency_share(original, changed)]}


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
