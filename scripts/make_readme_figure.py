"""The README's picture: an artwork, the default cloak, what a model that learned it would draw, and the same for
plain PGD at the same PSNR, on TAEF2 (a real pretrained encoder, from ../shared/models/taef2).

    .host/venv/bin/python scripts/make_readme_figure.py [--kind painting] [--size 256]

Writes docs/readme_cloak.jpg (five panels: original, default cloak, D(E(cloak)), PGD, D(E(PGD))) and prints the
PSNRs and the perfect-mimic readouts (engine/perfect_mimic.py) of both. About 3 min on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import common  # noqa: E402
import devset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="painting")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "readme_cloak.jpg"))
    args = ap.parse_args()
    E = common.load_host().engine
    import bench_mimicry as BM
    member = BM.taef2_with_decoder("the README figure")
    enc = E.as_ensemble(member)
    x, t, _ = devset.devset(args.size, (args.kind,))
    target = E.make_style_target(enc, t, "per_image", lambda p: p)
    with torch.inference_mode(False), torch.enable_grad():
        ours = E.cloak_images(x, enc, E.glaze_objectives(enc, target, 1), E.CloakOptions().settings())
        pgd, pgd_report, level = BM.matched_reference(E, enc, x, t, ours.reports[0]["psnr"])
    with torch.no_grad():
        drawn = [member.decode(member(p)).clamp(0, 1) for p in (ours.images, pgd)]
    print(f"default cloak: PSNR {ours.reports[0]['psnr']:.2f} dB, perfect mimic {ours.reports[0]['mimic_share']:.2f}; "
          f"plain PGD {level}/255: PSNR {pgd_report['psnr']:.2f} dB")
    grid = E.style_score.image_grid([[x, ours.images, drawn[0], pgd, drawn[1]]], tile=args.size, gap=6)
    from PIL import Image
    pixels = (grid[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
    Image.fromarray(pixels).save(args.out, quality=88)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
