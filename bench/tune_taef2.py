"""Tuning sweep on TAEF2 over the development set: candidate settings against the reference at matched PSNR.

The reference (L∞ sign PGD, no EOT) is run once per image at the 8-bit level nearest the preset's PSNR; each
candidate is then run with its PSNR ceiling on that image's reference PSNR. Prints per candidate the mean
ratios ours/reference of clean gain, gain after real JPEG q75, after the TAEF2 decode→encode round trip, SSIM.

    .host/venv/bin/python bench/tune_taef2.py --size 128 --preset default --only current,clean30
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import common
import devset
import glaze_eval as G

KEYS = ("psnr", "ssim", "gain", "gain_jpeg75", "gain_roundtrip", "gain_resize05", "sec")


def candidates(E, base):
    EOT = E.EOT
    levels = E.transforms.ROBUSTNESS_LEVELS
    levels["id50"] = EOT(p_identity=0.5)
    levels["clean30"] = EOT(p_identity=0.0, clean_weight=0.3)
    levels["clean50"] = EOT(p_identity=0.0, clean_weight=0.5)
    levels["jpgrs"] = EOT(p_identity=0.25, kinds=("jpeg", "resize", "blur"))
    r = dataclasses.replace
    return {
        "current": base,
        "off": r(base, robustness="off"),
        "nossim": r(base, min_ssim=None),
        "lr05": r(base, lr=0.5),
        "lr1": r(base, lr=1.0, lr_final=0.02),
        "floor02": r(base, floor=0.2),
        "floor03": r(base, floor=0.3),
        "eps32": r(base, eps=32 / 255),
        "id50": r(base, robustness="id50"),
        "clean30": r(base, robustness="clean30"),
        "clean50": r(base, robustness="clean50"),
        "jpgrs": r(base, robustness="jpgrs"),
        "adam": r(base, step_rule="adam"),
        "uniform": r(base, floor=1.0),
        "ssim93": r(base, min_ssim=0.93),
        "ssim93_rt": r(base, min_ssim=0.93, roundtrip_p=0.15),
        "ssim93_rt25": r(base, min_ssim=0.93, roundtrip_p=0.25),
        "pure": r(base, floor=1.0, min_ssim=None, robustness="off"),
        "pure_on": r(base, floor=1.0, min_ssim=None),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--only", default="")
    ap.add_argument("--images", default="", help="comma-separated dev-set indices (default: all)")
    args = ap.parse_args()
    E = G.engine()
    torch.manual_seed(0)
    enc = E.as_ensemble(common.tae("taef2"))
    member = enc.members[0]
    roundtrip = lambda y: member.decode(member(y))
    x, t, kinds = devset.devset(args.size if args.size < 512 else 256)
    if args.size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear", antialias=True)
        x = torch.round(x * 255) / 255
        t = devset.targets_for(x, kinds)
    idx = [int(i) for i in args.images.split(",")] if args.images else list(range(x.shape[0]))
    base = dataclasses.replace(E.settings_for(args.preset, "default", "on"), steps=args.steps)
    cands = candidates(E, base)
    names = [n for n in args.only.split(",") if n] or list(cands)
    refs = {}
    for i in idx:
        rows = G.matched_pair(E, enc, x[i:i + 1], t[i:i + 1], cands[names[0]], roundtrip=roundtrip)
        refs[i] = rows["ref"]
        print(f"ref {kinds[i]:14} psnr {rows['ref']['psnr']:.2f} gain {rows['ref']['gain']:.3f} | {names[0]} "
              f"psnr {rows['ours']['psnr']:.2f} gain {rows['ours']['gain']:.3f} jpeg {rows['ours']['gain_jpeg75']:.3f} "
              f"rt {rows['ours']['gain_roundtrip']:.3f} vs {rows['ref']['gain_jpeg75']:.3f} {rows['ref']['gain_roundtrip']:.3f}",
              flush=True)
        refs[i]["first"] = rows["ours"]
    ref_mean = G.mean_rows([refs[i] for i in idx], KEYS)
    print(G.fmt_table(f"reference, {args.preset}, {args.size}²", [("reference", ref_mean)], KEYS), flush=True)
    for n in names:
        per = []
        t0 = time.perf_counter()
        for i in idx:
            if n == names[0]:
                per.append(refs[i]["first"])
                continue
            s = dataclasses.replace(cands[n], min_psnr=refs[i]["psnr"])
            img, rep = G.cloak(E, enc, x[i:i + 1], t[i:i + 1], s)
            g = G.gains(E, enc, x[i:i + 1], img, t[i:i + 1], roundtrip)
            per.append(dict(psnr=rep["psnr"], ssim=rep["ssim"], sec=0.0, **{k: float(v.mean()) for k, v in g.items()}))
        m = G.mean_rows(per, KEYS)
        ratio = {k: m[k] / ref_mean[k] for k in KEYS if ref_mean[k]}
        print(f"{n:22} " + " ".join(f"{k}={m[k]:.4f}" for k in KEYS if k != "sec")
              + f" | ratio gain {ratio['gain']:.3f} jpeg {ratio['gain_jpeg75']:.3f} rt {ratio['gain_roundtrip']:.3f} "
              f"ssim {ratio['ssim']:.3f} | {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
