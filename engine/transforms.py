"""Image transforms people apply (on purpose or not) to cloaked images, as differentiable torch functions.

They serve twice: as Expectation-over-Transformation (EOT) draws inside the cloak's optimisation, so the
perturbation survives them, and as the attacks of the robustness check. Pixels are ``[B, 3, H, W]``
in 0..1; every function returns the same shape.

A geometric transform also returns a ``warp`` that applies the same change to a latent grid, so a
target latent stays aligned with the warped image (normalised coordinates do not depend on resolution).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import kornia
import torch
import torch.nn.functional as F

Warp = Callable[[torch.Tensor], torch.Tensor]


def jpeg(x: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG encode/decode (kornia) at ``quality`` 1..100, scalar or one per image."""
    q = torch.as_tensor(quality, dtype=torch.float32, device=x.device).reshape(-1)
    if q.numel() == 1 and x.shape[0] > 1:
        q = q.expand(x.shape[0])
    return kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), q.clamp(1, 100))


def resize_down_up(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Downscale by ``scale`` (antialiased) and back up to the original size (bicubic)."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel ±3σ)."""
    if sigma <= 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add Gaussian noise of standard deviation ``sigma`` (drawn on the CPU so seeds agree across devices)."""
    n = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return (x + sigma * n).clamp(0, 1)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through the normalised affine ``theta`` ``[B, 2, 3]`` (reflection at the borders)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def crop_resize_theta(b: int, frac: float | torch.Tensor, tx: float | torch.Tensor = 0.0,
                      ty: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Affine for "crop ``frac`` of each side at offset (tx, ty) in normalised units, resize back"."""
    frac, tx, ty = (torch.as_tensor(v, dtype=torch.float32).expand(b) for v in (frac, tx, ty))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = frac, frac
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    return theta


def rotation_theta(b: int, degrees: float, h: int, w: int) -> torch.Tensor:
    """Affine for a rotation by ``degrees`` about the centre, aspect ratio respected."""
    a = math.radians(degrees)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = math.cos(a), math.cos(a)
    theta[:, 0, 1] = -math.sin(a) * h / w
    theta[:, 1, 0] = math.sin(a) * w / h
    return theta


def screenshot(x: torch.Tensor, scale: float = 0.8) -> torch.Tensor:
    """Screenshot-like resampling: display at ``scale``, capture, resample back, light sharpening, 8-bit."""
    y = resize_down_up(x, scale)
    y = kornia.enhance.sharpness(y, 0.5)
    return quantize_8bit_ste(y)


def quantize_8bit_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels with a straight-through gradient."""
    q = torch.round(x.clamp(0, 1) * 255) / 255
    return x + (q - x).detach()


@dataclass
class EOT:
    """Random draws of the transforms above, for Expectation over Transformation.

    ``p_identity`` keeps some steps on the untouched image so the clean effect stays strong; each
    other step draws one transform kind, with parameters drawn per image from the ranges below.
    ``samples`` draws per step (their losses are averaged); ``clean_weight`` > 0 also scores the untouched
    image every step, with that share of the loss (one more encoder pass per step).
    """

    p_identity: float = 0.25
    samples: int = 1
    clean_weight: float = 0.0
    jpeg_quality: tuple[float, float] = (50.0, 95.0)
    resize_scale: tuple[float, float] = (0.45, 0.9)
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_sigma: tuple[float, float] = (0.005, 0.03)
    crop_frac: tuple[float, float] = (0.85, 1.0)
    kinds: tuple[str, ...] = field(default=("jpeg", "resize", "blur", "noise", "crop"))

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Warp | None]:
        def u(lo_hi):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand((), generator=gen).item()

        if torch.rand((), generator=gen).item() < self.p_identity:
            return x, None
        kind = self.kinds[int(torch.randint(len(self.kinds), (), generator=gen))]
        if kind == "jpeg":
            return jpeg(x, u(self.jpeg_quality)), None
        if kind == "resize":
            return resize_down_up(x, u(self.resize_scale)), None
        if kind == "blur":
            return gaussian_blur(x, u(self.blur_sigma)), None
        if kind == "noise":
            return gaussian_noise(x, u(self.noise_sigma), gen), None
        if kind == "crop":
            frac = u(self.crop_frac)
            room = 1.0 - frac
            theta = crop_resize_theta(x.shape[0], frac, u((-room, room)), u((-room, room)))
            return affine(x, theta), (lambda z, t=theta: affine(z, t))
        raise ValueError(f"unknown EOT transform {kind!r}; known: jpeg, resize, blur, noise, crop")


class WithRoundTrip:
    """An EOT that also draws, with probability ``p``, a round trip through a real autoencoder ``D(E(x))``
    (the VAE round trip and IMPRESS-style purifications start there). Other draws come from ``eot``."""

    def __init__(self, eot: EOT, autoencode: Callable[[torch.Tensor], torch.Tensor], p: float = 0.15):
        self.eot, self.autoencode, self.p = eot, autoencode, float(p)
        self.samples, self.clean_weight = eot.samples, eot.clean_weight

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, Warp | None]:
        if torch.rand((), generator=gen).item() < self.p:
            return self.autoencode(x).clamp(0, 1), None
        return self.eot(x, gen)


ROBUSTNESS_LEVELS = {
    "off": None,
    "on": EOT(),
    "strong": EOT(p_identity=0.1, samples=2, jpeg_quality=(30.0, 95.0), resize_scale=(0.3, 0.9),
                  blur_sigma=(0.3, 2.0), noise_sigma=(0.005, 0.05), crop_frac=(0.8, 1.0)),
}
