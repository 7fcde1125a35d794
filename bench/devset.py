"""The development set for tuning on a real encoder: varied art, made here, deterministic.

Ten images (eight at 256², two at 512²) of the kinds artists publish: flat-colour illustration, line art,
cel-shaded "anime" rendering, brush-stroke painting and photographs (scikit-image's bundled photos), each
paired with a target. Glaze's Ω(x, T) is the same picture style-transferred into a style unlike it. With no
SD img2img here, two deterministic stand-ins serve (``poster``: flat posterised colour with dark edges, for
photos and paintings; ``texture``: a hatching texture and palette shift, for flat and line art), so no method
is tuned to one target style.

    images, targets, kinds = devset(256)       # [8, 3, 256, 256] each, kinds: list of names
    images, targets, kinds = devset(512)       # the two 512² images
"""
from __future__ import annotations

import math

import numpy as np
import torch

KINDS_256 = ("flat", "lineart", "anime", "painting", "photo_coffee", "flat_scene", "photo_rocket", "comic")
KINDS_512 = ("flat_scene", "photo_astronaut")


def _rng(seed):
    return np.random.default_rng(seed)


def _photo(name: str, size: int) -> np.ndarray:
    import skimage.data
    import skimage.transform
    img = getattr(skimage.data, name)()[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    crop = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return skimage.transform.resize(crop, (size, size), anti_aliasing=True).astype(np.float32)


def _flat(size: int, seed: int) -> np.ndarray:
    """Flat-colour shapes on a flat background, anti-aliased edges (vector-art look)."""
    from PIL import Image, ImageDraw
    r = _rng(seed)
    big = size * 4
    palette = [tuple(int(c) for c in r.integers(30, 250, 3)) for _ in range(6)]
    im = Image.new("RGB", (big, big), palette[0])
    d = ImageDraw.Draw(im)
    for i in range(9):
        c = palette[1 + i % 5]
        x, y, s = r.integers(0, big, 2).tolist() + [int(r.integers(big // 10, big // 3))]
        if i % 3 == 0:
            d.ellipse([x - s, y - s, x + s, y + s], fill=c)
        elif i % 3 == 1:
            d.rectangle([x - s, y - s // 2, x + s, y + s // 2], fill=c)
        else:
            d.polygon([(x, y - s), (x + s, y + s), (x - s, y + s)], fill=c)
    return np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255


def _flat_scene(size: int, seed: int) -> np.ndarray:
    """A flat illustration of a landscape: sky, sun, layered hills, a house, outlined."""
    from PIL import Image, ImageDraw
    r = _rng(seed)
    big = size * 4
    im = Image.new("RGB", (big, big), (120, 180, 230))
    d = ImageDraw.Draw(im)
    d.ellipse([big * 0.65, big * 0.08, big * 0.85, big * 0.28], fill=(250, 210, 80), outline=(40, 30, 20), width=8)
    for k, col in enumerate([(90, 150, 90), (60, 120, 70), (40, 90, 50)]):
        base = big * (0.5 + 0.15 * k)
        pts = [(0, big)] + [(x, base - big * 0.08 * math.sin(x / big * (3 + k) + r.uniform(0, 6)))
                            for x in range(0, big + 1, big // 32)] + [(big, big)]
        d.polygon(pts, fill=col, outline=(30, 40, 30), width=8)
    x0, y0 = big * 0.2, big * 0.55
    d.rectangle([x0, y0, x0 + big * 0.2, y0 + big * 0.18], fill=(210, 90, 70), outline=(30, 20, 20), width=8)
    d.polygon([(x0 - big * 0.03, y0), (x0 + big * 0.1, y0 - big * 0.12), (x0 + big * 0.23, y0)],
              fill=(120, 60, 50), outline=(30, 20, 20), width=8)
    return np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255


def _lineart(size: int, seed: int) -> np.ndarray:
    """Ink strokes (curves of varying width) on off-white paper."""
    from PIL import Image, ImageDraw
    r = _rng(seed)
    big = size * 4
    im = Image.new("RGB", (big, big), (246, 242, 232))
    d = ImageDraw.Draw(im)
    for _ in range(28):
        cx, cy = r.uniform(0, big, 2)
        rad, a0, span = r.uniform(big * 0.05, big * 0.4), r.uniform(0, 2 * math.pi), r.uniform(1, 4)
        pts = [(cx + rad * math.cos(a0 + span * t / 40) * (1 + 0.2 * math.sin(5 * t / 40)),
                cy + rad * math.sin(a0 + span * t / 40)) for t in range(41)]
        d.line(pts, fill=(20, 20, 25), width=int(r.integers(3, 14)), joint="curve")
    return np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255


def _cel(photo: np.ndarray, levels: int = 5) -> torch.Tensor:
    """Cel shading of a photo: smoothed, few colour levels, dark outlines (anime / comic look)."""
    import kornia
    x = torch.from_numpy(photo).permute(2, 0, 1)[None]
    smooth = kornia.filters.bilateral_blur(x, (9, 9), 0.15, (4.0, 4.0))
    smooth = kornia.filters.median_blur(smooth, 5)
    cel = torch.round(smooth * levels) / levels
    edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(smooth))
    line = (edges > 0.08).float()
    line = kornia.filters.gaussian_blur2d(line, (3, 3), (0.6, 0.6))
    return (cel * (1 - line)).clamp(0, 1)[0].permute(1, 2, 0)


def _painting(photo: np.ndarray, seed: int) -> np.ndarray:
    """Brush strokes: many oriented, semi-opaque elongated dabs coloured from the photo (impasto look)."""
    from PIL import Image, ImageDraw, ImageFilter
    r = _rng(seed)
    size = photo.shape[0]
    big = size * 2
    src = (photo * 255).astype(np.uint8)
    im = Image.fromarray(src).resize((big, big), Image.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    d = ImageDraw.Draw(im, "RGBA")
    for _ in range(size * 12):
        x, y = r.integers(0, big, 2)
        col = tuple(int(c) for c in src[min(size - 1, y // 2), min(size - 1, x // 2)]) + (200,)
        a, ln, wd = r.uniform(0, math.pi), r.uniform(4, 14), r.uniform(2, 5)
        dx, dy = ln * math.cos(a), ln * math.sin(a)
        d.line([(x - dx, y - dy), (x + dx, y + dy)], fill=col, width=int(wd))
    return np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255


def image(kind: str, size: int) -> np.ndarray:
    """One development image ``[H, W, 3]`` float32 0..1 on 8-bit levels."""
    if kind == "flat":
        out = _flat(size, 1)
    elif kind == "flat_scene":
        out = _flat_scene(size, 2)
    elif kind == "lineart":
        out = _lineart(size, 3)
    elif kind == "anime":
        out = _cel(_photo("astronaut", size)).numpy()
    elif kind == "comic":
        out = _cel(_photo("chelsea", size), levels=4).numpy()
    elif kind == "painting":
        out = _painting(_photo("chelsea", size), 4)
    elif kind.startswith("photo_"):
        out = _photo(kind[len("photo_"):], size)
    else:
        raise ValueError(f"unknown development image {kind!r}")
    return np.round(out * 255).astype(np.float32) / 255


def poster(x: torch.Tensor) -> torch.Tensor:
    """Target style 1: flattened posterised colour, dark edges, warm palette (a "poster / comic" style)."""
    import kornia
    smooth = kornia.filters.bilateral_blur(x, (9, 9), 0.1, (3.0, 3.0))
    flat = torch.round(smooth * 4) / 4
    edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(x)).clamp(0, 0.25) * 4
    warm = flat * torch.tensor([1.1, 0.95, 0.75]).view(1, 3, 1, 1)
    return (warm * (1 - 0.8 * edges)).clamp(0, 1)


def texture(x: torch.Tensor) -> torch.Tensor:
    """Target style 2: cross-hatched canvas texture, blurred forms, cool palette (a "textured print" style)."""
    import kornia
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    hatch = 0.5 + 0.25 * torch.sin((xx + yy) * 0.9) + 0.25 * torch.sin((xx - yy) * 0.7)
    soft = kornia.filters.gaussian_blur2d(x, (9, 9), (2.5, 2.5))
    lum = kornia.color.rgb_to_grayscale(soft)
    cool = torch.cat([0.7 * lum + 0.2 * soft[:, :1], 0.9 * soft[:, 1:2], 0.3 + 0.7 * soft[:, 2:]], 1)
    return (cool * (0.75 + 0.35 * hatch)).clamp(0, 1)


def targets_for(x: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """Per-image targets in a style unlike the image's own: photos and paintings get ``poster``, flat and
    line art (which a poster filter would barely change) get ``texture``."""
    return torch.cat([(poster if k.startswith("photo") or k == "painting" else texture)(x[i:i + 1])
                      for i, k in enumerate(kinds)])


def devset(size: int = 256, kinds: tuple[str, ...] | None = None):
    """``(images [N, 3, size, size], targets, kinds)``; kinds default to the set for that size (the 256² set
    below 512²; other sizes are the 256² images resized, antialiased, back on 8-bit levels)."""
    kinds = kinds or (KINDS_512 if size >= 512 else KINDS_256)
    base = 512 if size >= 512 else 256
    x = torch.from_numpy(np.stack([image(k, base) for k in kinds])).permute(0, 3, 1, 2).contiguous()
    if size != base:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        x = torch.round(x.clamp(0, 1) * 255) / 255
    return x, targets_for(x, list(kinds)), list(kinds)


FLAT_KINDS = ("flat", "flat_scene", "lineart", "comic")
