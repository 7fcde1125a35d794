"""A zoomed side-by-side crop of a flat-colour area, cloaked on TAEF2 at each intensity preset (for the README).

Cloaks the development set's flat illustration (``flat_scene``, 256²) against TAEF2 with GlazePerturb's engine
path, then writes ``docs/flat_crop.png``: rows = presets; columns = original crop, cloaked crop, and the change
amplified ×10 around grey; each crop (sky, sun and hill edge) enlarged 4× with nearest-neighbour so single
pixels show. Prints the flat-region and textured-region mean change per preset.

    .host/venv/bin/python bench/flat_crop.py
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

import common
import devset
import glaze_eval as G

CROP = (slice(8, 72), slice(140, 236))  # rows, cols of the 256² image: flat sky, the sun's outline


def main():
    E = G.engine()
    enc = E.as_ensemble(common.tae("taef2"))
    x, t, _ = devset.devset(256, ("flat_scene",))
    rows = []
    for preset in ("low", "default", "high"):
        img, rep = G.cloak(E, enc, x, t, E.settings_for(preset, "default", "on"))
        flat, tex = (float(v[0]) * 255 for v in E.metrics.change_by_region(x, img))
        print(f"{preset:8} PSNR {rep['psnr']:.2f} SSIM {rep['ssim']:.4f} gain {rep['target_gain']:.3f} "
              f"flat |d| {flat:.3f}/255, textured |d| {tex:.3f}/255, ratio {flat / tex:.3f}", flush=True)
        a, b = x[0, :, CROP[0], CROP[1]], img[0, :, CROP[0], CROP[1]]
        diff = (0.5 + 10 * (b - a)).clamp(0, 1)
        rows.append(torch.cat([a, torch.ones(3, a.shape[1], 2), b, torch.ones(3, a.shape[1], 2), diff], 2))
    grid = torch.cat([torch.cat([r, torch.ones(3, 2, r.shape[2])], 1) for r in rows], 1)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    out = os.path.join(common.ROOT, "docs", "flat_crop.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    Image.fromarray(arr).resize((arr.shape[1] * 4, arr.shape[0] * 4), Image.NEAREST).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
