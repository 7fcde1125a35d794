"""Where a cloak's change sits, read from bench/screen_mimic.py's cached cloaks: does a measure see it?

HaarPSI and GMSD as piq computes them (engine.metrics) first average the picture over 2×2 pixels (HaarPSI's and
GMSD's own design: a viewing distance at which one pixel is under the eye's resolution), so a change at the
highest spatial frequencies (a pixel-level checkerboard) is invisible to both. A cloak optimised against one of them
(``visibility_weight``) can move its change there; this prints, per artist, variant and picture, the measures the
loss was not made against beside the ones it was:

  haarpsi / gmsd      piq's, with its 2×2 subsampling (what the report and ``visibility_weight`` use)
  haarpsi full-res    engine.metrics.haarpsi with ``subsample=False``: every pixel as it is
  ssim                kornia's, full resolution (11 px window)
  nyquist share       share of the change's energy that a 2×2 average removes (what the subsampled measures miss)
  chroma share        share of the change's energy in Cb/Cr rather than Y (YCbCr)

Variants are spelled as screen_mimic spells them; cloaks it has not made are reported missing (run it first).

    .host/venv/bin/python bench/visibility_bands.py --artists flat,lineart --variants "default,v1:visibility_weight=1.0"
"""
from __future__ import annotations

import argparse
import os
import sys

import kornia
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import bench_mimicry as BM  # noqa: E402
import screen_mimic as S  # noqa: E402


def nyquist_share(d: torch.Tensor) -> float:
    low = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(d, 2), scale_factor=2, mode="nearest")
    return float((d - low).pow(2).sum() / d.pow(2).sum().clamp_min(1e-20))


def chroma_share(d: torch.Tensor) -> float:
    ycc = kornia.color.rgb_to_ycbcr(d + 0.5) - kornia.color.rgb_to_ycbcr(torch.full_like(d, 0.5))
    return float(ycc[:, 1:].pow(2).sum() / ycc.pow(2).sum().clamp_min(1e-20))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artists", default="flat,lineart,painting,photo")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--pictures", type=int, default=2)
    args = ap.parse_args()
    E = common.load_host().engine
    table = S.chosen(E, args.variants.split(","))
    if "reference" in table:
        raise SystemExit("variant 'reference' is not read here: screen_mimic caches the reference PGD by its level")
    print(f"{'artist':8} {'variant':28} {'pic':>3} {'PSNR':>6} {'HaarPSI':>8} {'GMSD':>7} {'HaarPSI full-res':>16} "
          f"{'SSIM':>6} {'nyquist share':>13} {'chroma share':>12}")
    for artist in args.artists.split(","):
        x, t = BM.artist_sources(artist, args.pictures)
        for name in args.variants.split(","):
            rows = []
            for i in range(args.pictures):
                xi, ti = x[i:i + 1], t[i:i + 1]
                path, cached = S.cache_path(artist, name, xi, ti, table[name])
                if not cached:
                    print(f"{artist:8} {name:28} {i:>3} missing (run bench/screen_mimic.py with this variant)")
                    continue
                img = S.load_cached(path)[0]
                d = img - xi
                row = (float(E.psnr(img, xi)[0]), float(E.metrics.haarpsi(img, xi)[0]), float(E.metrics.gmsd(img, xi)[0]),
                       float(E.metrics.haarpsi(img, xi, subsample=False)[0]),
                       float(E.metrics.ssim(img, xi)[0]), nyquist_share(d), chroma_share(d))
                rows.append(row)
                print(f"{artist:8} {name:28} {i:>3} {row[0]:6.2f} {row[1]:8.4f} {row[2]:7.4f} {row[3]:16.4f} "
                      f"{row[4]:6.4f} {row[5]:13.2f} {row[6]:12.2f}", flush=True)
            if len(rows) > 1:
                m = [sum(c) / len(rows) for c in zip(*rows)]
                print(f"{artist:8} {name:28} {'mean':>3} {m[0]:6.2f} {m[1]:8.4f} {m[2]:7.4f} {m[3]:16.4f} {m[4]:6.4f} "
                      f"{m[5]:13.2f} {m[6]:12.2f}", flush=True)


if __name__ == "__main__":
    main()
