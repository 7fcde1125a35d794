"""Budgets: how much, and where, an image may change.

A budget is set up once on the original pixels (``setup``), gives the per-pixel scale of an
optimisation step (``caps``), and projects a perturbation back into the allowed set (``project``).
Pixels are ``[B, 3, H, W]`` in 0..1; perturbations are float32 of the same shape.
"""
from __future__ import annotations

import math

import kornia
import torch

from .metrics import haarpsi


class LinfBox:
    """Every pixel may move by at most ``eps`` (the L∞ ball of PGD / PhotoGuard / Mist)."""

    def __init__(self, eps: float):
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixel units), got {eps}")
        self.eps = float(eps)
        self.caps: torch.Tensor | None = None

    def setup(self, x: torch.Tensor) -> None:
        self.caps = torch.full_like(x[:, :1], self.eps)

    def project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        delta = torch.maximum(torch.minimum(delta, self.caps), -self.caps)
        return (x + delta).clamp(0, 1) - x

    def penalty(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor | None:
        return None


def texture_map(x: torch.Tensor, window: int = 7, knee: float = 0.03, smooth: float = 2.0) -> torch.Tensor:
    """How much local texture can hide a change, ``[B, 1, H, W]`` in 0..1 (0 = flat colour).

    The local standard deviation of luminance over a ``window``² box, squashed by ``std/(std+knee)``
    and smoothed so the budget has no hard edges that would themselves be visible.
    """
    y = kornia.color.rgb_to_grayscale(x)
    mean = kornia.filters.box_blur(y, (window, window), border_type="reflect")
    mean_sq = kornia.filters.box_blur(y * y, (window, window), border_type="reflect")
    std = (mean_sq - mean * mean).clamp_min(0).sqrt()
    t = std / (std + knee)
    k = 2 * math.ceil(3 * smooth) + 1
    return kornia.filters.gaussian_blur2d(t, (k, k), (smooth, smooth), border_type="reflect").clamp(0, 1)


# which HaarPSI the visibility term reads: piq's own (the picture averaged over 2×2 pixels first, its model of viewing
# distance, blind to a pixel-level checkerboard: a loss made against it alone moves the change there, docs/evidence.md
# "A visibility term in the loss"), every pixel as it is ("full"), or the mean of the two ("both")
VISIBILITY_MEASURES = ("subsampled", "full", "both")
LOWFREQ_BOX = 5  # px: the box whose blur of the change counts as its low-frequency part (as the metric's)


class AdaptiveBudget(LinfBox):
    """Content-adaptive budget (the default): change goes where texture hides it.

    Per-pixel cap ``eps * (floor + (1 - floor) * texture)``, so flat colours and smooth backgrounds
    (where Glaze and Nightshade artefacts show most) get only ``floor * eps``; plus an optional
    per-image L2 ceiling given as a PSNR floor (``min_psnr`` dB), which spends the change where it
    moves the encoder most rather than saturating every pixel as an L∞ sign attack does.
    """

    def __init__(self, eps: float, floor: float = 0.1, min_psnr: float | None = None, window: int = 7,
                 lowfreq_cut: float = 0.0, visibility_weight: float = 0.0, visibility_measure: str = "subsampled"):
        super().__init__(eps)
        if not 0 <= floor <= 1:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        if not 0 <= lowfreq_cut <= 1:
            raise ValueError(f"lowfreq_cut must be in [0, 1], got {lowfreq_cut}")
        if visibility_weight < 0:
            raise ValueError(f"visibility_weight must be at least 0, got {visibility_weight}")
        if visibility_measure not in VISIBILITY_MEASURES:
            raise ValueError(f"visibility_measure must be one of {VISIBILITY_MEASURES}, got {visibility_measure!r}")
        self.floor, self.min_psnr, self.window = float(floor), min_psnr, window
        # share of the change's local mean (a LOWFREQ_BOX² box blur of it) taken out at every projection, in smooth
        # areas (scaled by 1 - texture): smooth blotches there (what mottles a sky at 1:1;
        # engine.metrics.low_frequency_share) give way to fine grain; texture hides slow change and keeps it
        self.lowfreq_cut = float(lowfreq_cut)
        # weight of what a person sees of the change, 1 - HaarPSI(x + δ, x) (engine.metrics.haarpsi, differentiable),
        # added to the loss: the step then prefers changes HaarPSI does not see (fine grain in texture) to ones it
        # does (smooth blotches, edges moved); 0 = off. ``visibility_measure``: which HaarPSI (VISIBILITY_MEASURES)
        self.visibility_weight = float(visibility_weight)
        self.visibility_measure = visibility_measure
        self.smooth: torch.Tensor | None = None
        self.radius: torch.Tensor | None = None

    def setup(self, x: torch.Tensor) -> None:
        t = texture_map(x.float(), self.window)
        self.smooth = 1 - t
        caps = self.eps * (self.floor + (1 - self.floor) * t)
        # caps on whole 8-bit levels: a change saturated at its cap then survives the final rounding intact
        # (a cap of 3.6 levels would otherwise be rounded down to 3, losing a tenth of the change)
        self.caps = torch.minimum((caps * 255).round().clamp_min(1) / 255, torch.full_like(caps, self.eps))
        if self.min_psnr is not None:
            n = x[0].numel()
            self.radius = torch.full((x.shape[0],), math.sqrt(n) * 10 ** (-self.min_psnr / 20), device=x.device)

    def project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self.lowfreq_cut > 0:
            delta = delta - (self.lowfreq_cut * self.smooth) * kornia.filters.box_blur(
                delta, (LOWFREQ_BOX, LOWFREQ_BOX), border_type="reflect")
        delta = super().project(x, delta)
        if self.radius is not None:
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (self.radius / norm).clamp(max=1.0).view(-1, 1, 1, 1)
        return delta

    def penalty(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor | None:
        if self.visibility_weight <= 0:
            return None
        if self.visibility_measure == "subsampled":
            seen = haarpsi(x_adv, x)
        elif self.visibility_measure == "full":
            seen = haarpsi(x_adv, x, subsample=False)
        else:
            seen = (haarpsi(x_adv, x) + haarpsi(x_adv, x, subsample=False)) / 2
        return self.visibility_weight * (1 - seen)


class LpipsBudget(AdaptiveBudget):
    """Glaze's perceptual budget: ``alpha * max(LPIPS(x+δ, x) - p, 0)`` added to the loss, inside an
    adaptive box. Needs the ``lpips`` package and its network weights, which this machine cannot download.
    """

    def __init__(self, eps: float, p: float = 0.05, alpha: float = 30.0, **kw):
        super().__init__(eps, **kw)
        self.p, self.alpha = p, alpha
        self.net = load_lpips()

    def penalty(self, x, x_adv):
        net = self.net.to(x.device)
        d = net(x_adv * 2 - 1, x * 2 - 1).flatten(1).mean(1)
        seen = super().penalty(x, x_adv)
        return self.alpha * (d - self.p).clamp_min(0) + (0 if seen is None else seen)


def load_lpips():
    try:
        import lpips  # optional dependency
    except ImportError as e:
        raise ValueError(
            "budget 'lpips' needs the 'lpips' package: pip install lpips (with internet once, so it can "
            "fetch its AlexNet weights), or choose the 'adaptive' budget, which needs no weights") from e
    try:
        return lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False)
    except Exception as e:  # weights are fetched on first use
        raise ValueError(
            f"budget 'lpips': its weights could not be loaded ({type(e).__name__}: {e}); run once with internet "
            "so lpips can download them, or choose the 'adaptive' budget, which needs no weights") from e


def quantize_to_8bit(x: torch.Tensor, x_adv: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """Round ``x_adv`` to 8-bit levels without leaving the budget, so it holds in a saved PNG too.

    Rounds to the nearest level, then steps any pixel that rounding pushed past its cap one level back
    toward the original (exact when ``x`` is itself on 8-bit levels, as images loaded from PNG/JPG are).
    """
    q = torch.round(x_adv.clamp(0, 1) * 255) / 255
    over = (q - x).abs() > caps + 1e-6
    back = q - torch.sign(q - x) / 255
    return torch.where(over, back, q).clamp(0, 1)


class Frozen:
    """Wraps a budget so pixels where ``keep`` is False never change (e.g. fully transparent pixels of an RGBA
    image: a change there is invisible on screen but shows in any viewer that drops alpha, and wastes budget).

    ``keep``: ``[B, 1, H, W]`` bool (or 0/1), True where the image may change. Everything else is the inner
    budget's; its own caps are zero where frozen (so no step moves those pixels), and projection holds them at
    zero before the inner budget projects (so its PSNR ceiling counts only pixels that may change). The inner
    budget is left as it was set up.
    """

    def __init__(self, inner, keep: torch.Tensor):
        self.inner = inner
        self.keep = keep.to(torch.float32)
        self.caps: torch.Tensor | None = None

    def setup(self, x: torch.Tensor) -> None:
        self.inner.setup(x)
        self.caps = self.inner.caps * self.keep.to(self.inner.caps.device)

    def project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        keep = self.keep.to(delta.device)
        return self.inner.project(x, delta * keep) * keep

    def penalty(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor | None:
        return self.inner.penalty(x, x_adv)
