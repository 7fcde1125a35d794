"""Crops at 1:1 and 3× of where a cloak shows first (issue 40): a smooth sky, flat colour and skin.

Cloaks three development-set pictures against TAEF2 (with its decoder, GlazePerturb's engine path at render
quality ``--quality``, robustness on) and makes plain PGD at the 8-bit L∞ level whose PSNR is nearest each cloak's
(bench_mimicry.matched_reference), then writes ``docs/visibility_crops.png``: one row per place (sky of
``photo_rocket`` 256², flat colour of ``flat_scene`` 256², the face of ``photo_astronaut`` 512²); columns =
original, cloak, PGD, each as a 96² crop at 1:1 and then its centre 32² enlarged 3× (nearest neighbour, so single
pixels show). Prints each picture's PSNR, HaarPSI and GMSD (engine.metrics) for the cloak and PGD, and the same on
the crop. The PNG is lossless on purpose: a JPEG would smooth away the very grain it is meant to show.

    .host/venv/bin/python bench/visibility_crops.py                       # the default (~3 cloaks + 3 PGD)
    .host/venv/bin/python bench/visibility_crops.py --quality faster --out /tmp/crops.png

Cloaks are cached in bench/out/visibility_crops/ (keyed by the picture and the settings).
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np
import torch
from PIL import Image

import bench_mimicry as BM
import common
import devset
import glaze_eval as G

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "visibility_crops")
# (devset kind, size, top-left of the 96² crop, what it shows)
PLACES = (("photo_rocket", 256, (0, 140), "smooth sky"),
          ("flat_scene", 256, (8, 24), "flat colour"),
          ("photo_astronaut", 512, (90, 170), "skin"))
CROP, ZOOM = 96, 3


def cloaked(E, enc, kind, size, settings):
    x, t, _ = devset.devset(size, (kind,))
    key = hashlib.sha1(x.numpy().tobytes() + repr(settings).encode()).hexdigest()[:16]
    path = os.path.join(OUT, f"{kind}-{key}.pt")
    if os.path.isfile(path):
        return x, torch.load(path, weights_only=True)
    ours = BM.quantise(G.cloak(E, enc, x, t, settings)[0])
    ref, _, level = BM.matched_reference(E, enc, x, t, float(E.psnr(ours, x)[0]))
    done = {"cloak": ours, "pgd": BM.quantise(ref), "level": level}
    os.makedirs(OUT, exist_ok=True)
    torch.save(done, path)
    return x, done


def panel(img: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """The 96² crop at 1:1 beside its centre 32² at 3× (nearest neighbour)."""
    crop = img[0, :, top:top + CROP, left:left + CROP]
    c = (CROP - CROP // ZOOM) // 2
    zoom = crop[:, c:c + CROP // ZOOM, c:c + CROP // ZOOM].repeat_interleave(ZOOM, 1).repeat_interleave(ZOOM, 2)
    return torch.cat([crop, torch.ones(3, CROP, 2), zoom], 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", default="default", help="GlazePerturb render quality of the cloak")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "docs", "visibility_crops.png"))
    args = ap.parse_args()
    E = common.load_host().engine
    enc = E.as_ensemble(BM.taef2_with_decoder("the crops"))
    settings = E.settings_for("default", args.quality, "on")
    rows = []
    print(f"{'place':12} {'set':6} {'PSNR':>6} {'HaarPSI':>8} {'GMSD':>7}   crop: {'HaarPSI':>8} {'GMSD':>7}")
    for kind, size, (top, left), what in PLACES:
        x, done = cloaked(E, enc, kind, size, settings)
        cells = [panel(x, top, left)]
        box = (slice(None), slice(None), slice(top, top + CROP), slice(left, left + CROP))
        for name in ("cloak", "pgd"):
            img = done[name]
            label = name if name == "cloak" else f"PGD {done['level']}/255"
            print(f"{what:12} {label:10} {float(E.psnr(img, x)[0]):6.2f} {float(E.metrics.haarpsi(img, x)[0]):8.3f} "
                  f"{float(E.metrics.gmsd(img, x)[0]):7.4f}   crop: {float(E.metrics.haarpsi(img[box], x[box])[0]):8.3f} "
                  f"{float(E.metrics.gmsd(img[box], x[box])[0]):7.4f}", flush=True)
            cells.append(panel(img, top, left))
        gap = torch.ones(3, CROP, 6)
        rows.append(torch.cat([c for cell in cells for c in (cell, gap)][:-1], 2))
    grid = torch.cat([c for r in rows for c in (r, torch.ones(3, 6, r.shape[2]))][:-1], 1)
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(args.out, optimize=True)
    print(f"wrote {args.out} ({arr.shape[1]}×{arr.shape[0]}): rows sky, flat colour, skin; columns original, cloak "
          f"({args.quality}), PGD at matched PSNR, each 1:1 then 3×")


if __name__ == "__main__":
    main()
