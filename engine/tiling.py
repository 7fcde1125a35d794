"""Tiled cloaking: any image size in bounded memory, at a cost that grows with the pixels and no faster.

The perturbation δ stays one whole-image tensor: its step, the budget's projection (per-pixel caps and the
PSNR ceiling) and the 8-bit rounding see the whole image, so tiles cannot leave seams in how the change is
spent. Each EOT draw (JPEG, resize, blur, noise, crop) is made on the whole image too, so its noise, geometry
and JPEG blocks are the whole image's. Only the encoder's passes are tiled: every tile is cut out *with a
margin* around it, encoded (one tile's activations in memory at a time) and scored on its core alone; the
gradients of the cores add up to the gradient of the whole image's loss, exactly so for an encoder whose
receptive field the margin covers and that has no normalisation across the image. TAEF2 has both a wide field
and GroupNorm (in its three deepest blocks), so each tile normalises with its own statistics: its tiled gradient
keeps a cosine of 0.92-0.96 with the whole image's under every EOT draw, and a cloak made in tiles is within
2-5 % of a whole one (bench/bench_scale.py, protection section). The round trip through a decoder, which cannot
run on a 4096² image at once, is drawn tile by tile (its gradient agrees less: cosine about 0.3-0.4).

This needs an objective whose loss is a sum over latent positions (``tileable``, with ``region_loss``): the latent match of Glaze
and of Nightshade's latent form. Other objectives (latent style statistics, the noise match through a
diffusion model) run untiled, within the up-front memory check of engine.estimate.

Also here: :class:`TiledEncoder`, tiles without gradients (calibration, reports), exact for TAEF2 (its local
head runs in tiles, its GroupNorm tail on the whole 1/8-scale feature map), so nothing encodes a 4096² image in
one piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .optimize import Cancelled
from .transforms import WithRoundTrip

JPEG_BLOCK = 16   # tile offsets on multiples of this keep JPEG's 8×8 blocks (and 2×2 chroma) where a whole image has them
# pixels of context around each tile. The gradient's tiles use DEFAULT_MARGIN: on TAEF2, 32 px gave a cloak within
# 2 % (clean) / 5 % (JPEG) of a whole one, 64 px within 1 % / 3 %, at about twice the margin's cost (512² in 256²
# tiles). Encoding without gradients (calibration, reports) uses REPORT_MARGIN: exact for TAEF2.
DEFAULT_MARGIN = 32
REPORT_MARGIN = 64
# the automatic tile side: an image of more than AUTO_TILE² pixels is cloaked in tiles of about AUTO_TILE px a
# side. On a CPU, passes over 512-640 px crops cost the least per pixel (a 1088² pass costs 1.5x as much per
# pixel: caches), so tiles are also the faster way; a GPU takes bigger tiles, up to what its memory allows
AUTO_TILE = {"cpu": 512, "cuda": 2048}


@dataclass(frozen=True)
class Tile:
    """``y0:y1, x0:x1`` the core this tile scores; ``cy0:cy1, cx0:cx1`` the crop it encodes (core + margin,
    clipped to the image)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def crop_pixels(self) -> int:
        return (self.cy1 - self.cy0) * (self.cx1 - self.cx0)


def alignment(multiple: int) -> int:
    """Tile edges fall on multiples of this: the encoder's multiple and JPEG's block."""
    m = max(1, int(multiple))
    return m * JPEG_BLOCK // math.gcd(m, JPEG_BLOCK)


def plan_tiles(height: int, width: int, tile: int, margin: int, multiple: int) -> list[Tile]:
    """Cover ``height``×``width`` (already a multiple of ``multiple``) with cores of at most about ``tile`` px a
    side, as even as the alignment allows, each with ``margin`` px of context (rounded up to the alignment)."""
    a = alignment(multiple)
    margin = -(-max(0, int(margin)) // a) * a

    def edges(n_px: int) -> list[int]:
        n = max(1, math.ceil(n_px / max(a, int(tile))))
        cuts = [0] + [min(n_px, round(i * n_px / n / a) * a) for i in range(1, n)] + [n_px]
        return sorted(set(cuts))

    ys, xs = edges(height), edges(width)
    out = []
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            out.append(Tile(y0, y1, x0, x1, max(0, y0 - margin), min(height, y1 + margin),
                            max(0, x0 - margin), min(width, x1 + margin)))
    return out


def border_energy_ratio(change: torch.Tensor, tiles: list[Tile], width: int = 8) -> float:
    """Mean squared change in ``width``-px bands along the inner tile borders over that elsewhere (1.0: the
    borders look like the rest, i.e. no seam). ``change`` ``[1, 3, H, W]``."""
    h, w = change.shape[-2:]
    e = change.float().pow(2).sum(1)[0]
    band = torch.zeros(h, w, dtype=torch.bool, device=e.device)
    for t in tiles:
        for y in (t.y0, t.y1):
            if 0 < y < h:
                band[max(0, y - width):y + width, :] = True
        for x in (t.x0, t.x1):
            if 0 < x < w:
                band[:, max(0, x - width):x + width] = True
    if band.all() or not band.any():
        raise ValueError("border_energy_ratio needs at least two tiles and room inside them")
    return float(e[band].mean() / e[~band].mean().clamp_min(1e-20))


def encode_tiled(member: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, tiles: list[Tile],
                 stride: int) -> torch.Tensor:
    """``member(pixels)`` without gradients, one tile at a time (cores stitched on the latent grid)."""
    if len(tiles) == 1:
        with torch.no_grad():
            return member(pixels)
    out = None
    with torch.no_grad():
        for t in tiles:
            z = member(pixels[..., t.cy0:t.cy1, t.cx0:t.cx1])
            if out is None:
                out = z.new_zeros(z.shape[0], z.shape[1], pixels.shape[-2] // stride, pixels.shape[-1] // stride)
            out[..., t.y0 // stride:t.y1 // stride, t.x0 // stride:t.x1 // stride] = z[
                ..., (t.y0 - t.cy0) // stride:(t.y1 - t.cy0) // stride, (t.x0 - t.cx0) // stride:(t.x1 - t.cx0) // stride]
    return out


class TiledEncoder:
    """An ensemble member that encodes big images tile by tile when no gradient is wanted (calibration, targets,
    reports); with gradients it is the plain member (the tiled gradient of :class:`TiledGradient` cuts its own
    tiles). Everything else (name, multiple, decode, ...) is the member's."""

    def __init__(self, member, tile: int, margin: int):
        self.member, self.tile, self.margin = member, int(tile), int(margin)

    def __getattr__(self, name):
        return getattr(self.member, name)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        if torch.is_grad_enabled() or h * w <= (self.tile + 2 * self.margin) ** 2:
            return self.member(pixels)
        tiles = plan_tiles(h, w, self.tile, self.margin, self.member.multiple)
        split = split_at_norms(self.member.module)
        if split is not None:  # local head in tiles, the GroupNorm tail on the whole (small) feature map: exact
            head, tail = split
            with torch.no_grad():
                feats = encode_tiled(lambda p: head(p.to(self.member.device, self.member.dtype)
                                                    .contiguous(memory_format=torch.channels_last)),
                                     pixels, tiles, _stride(head, pixels))
                return tail(feats).float()
        return encode_tiled(self.member, pixels, tiles, self.member.multiple)


def no_grad_tiles(member) -> "TiledEncoder":
    """``member`` encoding big images in tiles (without gradients): for targets, anchors, calibration."""
    device_type = torch.device(member.device).type
    return TiledEncoder(member, AUTO_TILE.get(device_type, AUTO_TILE["cpu"]), REPORT_MARGIN)


def split_at_norms(module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(head, tail)`` of a sequential encoder whose GroupNorm layers all lie after its first few children (FLUX.2's
    TAE: in its three deepest blocks, at 1/8 scale), so the head is local and can run in tiles while the tail runs
    on the whole, 64x smaller, feature map; None for other encoders."""
    if not isinstance(module, torch.nn.Sequential):
        return None
    children = list(module.children())
    first = next((i for i, c in enumerate(children)
                  if any(isinstance(m, torch.nn.GroupNorm) for m in c.modules())), None)
    if first is None or first == 0:
        return None
    return torch.nn.Sequential(*children[:first]), torch.nn.Sequential(*children[first:])


def _stride(head, pixels) -> int:
    a = alignment(1)
    with torch.no_grad():
        probe = pixels[:1, :, :a * 4, :a * 4]
        out = head(probe.to(next(head.parameters()).device, next(head.parameters()).dtype))
    return probe.shape[-2] // out.shape[-2]


class TiledGradient:
    """The gradient of ``objective`` (one with ``region_loss``) on a whole padded image, one tile at a time.

    Each EOT draw transforms the whole image (its backward pass too: one whole-image tensor per transform
    stage), then the transformed image is encoded tile by tile, each tile's core scored against the (warped,
    for crops) target; a decode→encode round-trip draw runs inside each tile.
    """

    returns_gradient = True  # engine.optimize takes its (gradient, loss) in place of a loss to differentiate

    def __init__(self, objective, tiles: list[Tile], encoder=None, should_stop: Callable[[], bool] | None = None):
        if not objective.tileable:
            raise ValueError(f"{type(objective).__name__} is not a sum over latent positions; it cannot be tiled")
        self.objective, self.tiles, self.encoder = objective, tiles, encoder  # encoder: the passes to use
        self.should_stop = should_stop  # checked between tiles, so Cancel need not wait for a whole big step

    def __call__(self, seen: torch.Tensor, transforms, gen: torch.Generator, samples: int,
                 clean_weight: float) -> tuple[torch.Tensor, float]:
        return self._grad(seen, transforms, gen, samples, clean_weight)

    def _grad(self, seen, transforms, gen, samples, clean_weight):
        grad = torch.zeros_like(seen)
        total = self._tiles(seen, None, clean_weight, grad) if clean_weight > 0 else 0.0
        for _ in range(samples):
            total += self._draw(seen, transforms, gen, (1 - clean_weight) / samples, grad)
        return grad, total

    def _draw(self, seen, transforms, gen, weight, grad) -> float:
        """One EOT draw, made on the whole image (so noise, crops and JPEG blocks are the whole image's), its
        encoder passes tiled; the round trip through a decoder, which cannot run whole, runs tile by tile."""
        if transforms is None:
            return self._tiles(seen, None, weight, grad)
        if isinstance(transforms, WithRoundTrip):
            if torch.rand((), generator=gen).item() < transforms.p:
                autoencode = transforms.autoencode
                return self._tiles(seen, None, weight, grad, per_tile=lambda c: autoencode(c).clamp(0, 1))
            transforms = transforms.eot
        src = seen.detach().requires_grad_(True)
        with torch.enable_grad():
            warped, warp = transforms(src, gen)
        if warped is src:
            return self._tiles(seen, None, weight, grad)
        buf = torch.zeros_like(seen)
        value = self._tiles(warped.detach(), warp, weight, buf)
        (g,) = torch.autograd.grad(warped, src, buf)
        grad += g
        return value

    def _tiles(self, image, warp, weight, grad, per_tile=None) -> float:
        # the draw moved the whole image: move the whole target latents with it
        targets = None if warp is None else self.objective.warped_targets(warp, image.shape[0], image.device)
        total = 0.0
        for t in self.tiles:
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("cancelled between tiles")
            crop = image[..., t.cy0:t.cy1, t.cx0:t.cx1].detach().requires_grad_(True)
            view = per_tile(crop) if per_tile is not None else crop
            loss = self.objective.region_loss(view, None, t, targets=targets, encoder=self.encoder).sum() * weight
            (gc,) = torch.autograd.grad(loss, crop)
            grad[..., t.cy0:t.cy1, t.cx0:t.cx1] += gc
            total += float(loss.detach())
        return total


__all__ = ["Tile", "plan_tiles", "border_energy_ratio", "alignment", "encode_tiled", "split_at_norms", "TiledEncoder", "TiledGradient",
           "DEFAULT_MARGIN",
           "REPORT_MARGIN", "AUTO_TILE", "no_grad_tiles"]
