"""Rebuild the bundled sample images (deterministic): `.host/venv/bin/python samples/make_samples.py`.

- coffee.png: scikit-image's `data.coffee()` photo (held out from the TAESD training set), resized to
  384x256 (non-square on purpose, to exercise padding to the latent grid).
- coffee_style.png: a hand-made "target style" of the same picture: smoothed, posterised to a few flat
  colours with dark ink edges (a woodcut/poster look), for StyleTargetLatents in the demo workflows.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from skimage import data, feature, filters, transform

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = (256, 384)  # (height, width)


def artwork() -> np.ndarray:
    """coffee() (400x600) resized to 256x384, uint8 HWC."""
    img = transform.resize(data.coffee(), SIZE, order=3, anti_aliasing=True)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def poster_style(img: np.ndarray, levels: int = 4) -> np.ndarray:
    """Flat posterised colours plus black Canny edges: a strong, easily recognisable style."""
    smooth = filters.gaussian(img / 255.0, sigma=2.0, channel_axis=-1)
    poster = np.round(smooth * (levels - 1)) / (levels - 1)
    gray = filters.gaussian(img.mean(axis=-1) / 255.0, sigma=1.0)
    edges = feature.canny(gray, sigma=2.0, low_threshold=0.05, high_threshold=0.12)
    poster[edges] = 0.05
    return (np.clip(poster, 0, 1) * 255 + 0.5).astype(np.uint8)


PORTFOLIO = {  # a small portfolio for the folder workflows: held-out coffee plus two crops, three sizes
    "coffee_cup.png": lambda: data.coffee()[40:360, 140:460],
    "coffee_beans.png": lambda: data.coffee()[0:300, 0:400],
    "coffee_table.png": lambda: data.coffee()[150:400, 300:600],
}
PORTFOLIO_SIZES = {"coffee_cup.png": (128, 128), "coffee_beans.png": (96, 128), "coffee_table.png": (128, 152)}


def portfolio() -> list[tuple[str, np.ndarray]]:
    out = []
    for name, crop in PORTFOLIO.items():
        img = transform.resize(crop(), PORTFOLIO_SIZES[name], order=3, anti_aliasing=True)
        out.append((os.path.join("portfolio", name), (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)))
    return out


def main() -> None:
    art = artwork()
    os.makedirs(os.path.join(HERE, "portfolio"), exist_ok=True)
    for name, pixels in (("coffee.png", art), ("coffee_style.png", poster_style(art)), *portfolio()):
        path = os.path.join(HERE, name)
        Image.fromarray(pixels).save(path, optimize=True)
        print(f"{path}: {pixels.shape[1]}x{pixels.shape[0]}, {os.path.getsize(path) // 1024} KB")


if __name__ == "__main__":
    main()
