"""Calibration sweep behind the GlazePerturb presets: candidate settings against the reference loop's curve.

For each candidate (optimiser, budget shape, EOT mix) it prints PSNR, SSIM, clean target gain, gain after a
real JPEG q75 and a 0.5x down-up resize, and the step at which the clean gain first reaches each reference
run's final gain; the reference loop (L∞ sign PGD, no EOT, same steps) is run at several bounds so every
candidate can be read against it at its own PSNR (linear interpolation between the two nearest bounds).

    .host/venv/bin/python bench/sweep_glaze.py --images 2 --steps 100 [--preset low|default|high] [--only a,b]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

import common
from toy_glaze import run, steps_to_reach


def interp(curve, psnr, key):
    """Value of ``key`` on the reference curve (sorted by PSNR) at ``psnr``, linear between neighbours."""
    pts = sorted((r["psnr"], r[key]) for r in curve)
    if psnr <= pts[0][0]:
        return pts[0][1]
    for (p0, v0), (p1, v1) in zip(pts, pts[1:]):
        if p0 <= psnr <= p1:
            return v0 + (v1 - v0) * (psnr - p0) / (p1 - p0)
    return pts[-1][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--only", default="", help="comma-separated candidate names")
    ap.add_argument("--preset", default="default", help="intensity preset the candidates start from")
    args = ap.parse_args()
    pack = common.load_host()
    E = pack.engine
    from importlib import import_module
    adapters = import_module("ComfyUI-Cloak.nodes.comfy_adapters")
    enc = E.as_ensemble(adapters.vae_encoder(common.taesd_vae()))
    enc.prepare()
    x = common.photos(args.size, args.images)
    styles = common.stylise(x)
    levels = E.transforms.ROBUSTNESS_LEVELS
    EOT = E.EOT
    levels["id50"] = EOT(p_identity=0.5)
    levels["clean30"] = EOT(p_identity=0.0, clean_weight=0.3)
    levels["clean50"] = EOT(p_identity=0.0, clean_weight=0.5)
    levels["id40"] = EOT(p_identity=0.4)
    levels["clean30jpg"] = EOT(p_identity=0.0, clean_weight=0.3, kinds=("jpeg", "jpeg", "resize", "blur", "noise", "crop"))

    base = dataclasses.replace(E.settings_for(args.preset, "default", "on"), steps=args.steps)
    cands = {
        "current": base,
        "off": dataclasses.replace(base, robustness="off"),
        "adam": dataclasses.replace(base, step_rule="adam"),
        "id50": dataclasses.replace(base, robustness="id50"),
        "clean30": dataclasses.replace(base, robustness="clean30"),
        "clean50": dataclasses.replace(base, robustness="clean50"),
        "clean30jpg": dataclasses.replace(base, robustness="clean30jpg"),
        "lr.5": dataclasses.replace(base, lr=0.5),
        # ε and floor around the presets (chosen 2026-11-23: doubling the old 6/10/16 ε to 12/20/32 raised the
        # gain at equal PSNR by 16-21 % and SSIM too; floor 0.1 keeps flat areas at the old absolute cap)
        "old_eps/2_floor.2": dataclasses.replace(base, eps=base.eps / 2, floor=0.2),
        "eps*2/3": dataclasses.replace(base, eps=base.eps * 2 / 3),
        "eps*2/3_id40": dataclasses.replace(base, eps=base.eps * 2 / 3, robustness="id40"),
        "eps*1.5": dataclasses.replace(base, eps=base.eps * 1.5),
        "floor.2": dataclasses.replace(base, floor=0.2),
        "id40": dataclasses.replace(base, robustness="id40"),
    }
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only.split(",")}
    print(f"preset {args.preset}; TAESD {args.size}², {args.images} images, {args.steps} steps; device {enc.members[0].device}")
    curve = []
    cache = f"/tmp/sweep_glaze_ref_{args.size}_{args.images}_{args.steps}.json"
    if os.path.exists(cache):
        curve = json.load(open(cache))
    for eps in (3, 4, 5, 6, 8) if not curve else ():
        r, traj = run(E, enc, x, styles, E.reference_settings(eps / 255, args.steps), 0)
        r["eps"], r["traj"] = eps, traj
        curve.append(r)
    json.dump(curve, open(cache, "w"))
    for r in curve:
        eps = r["eps"]
        print(f"reference eps {eps}/255: psnr {r['psnr']:.2f} ssim {r['ssim']:.4f} gain {r['target_gain']:.4f} "
              f"jpeg75 {r['gain_jpeg75']:.4f} resize {r['gain_resize05']:.4f} {r['sec_img']:.2f} s/img")
    print(f"{'candidate':12} {'psnr':>6} {'ssim':>6} {'gain':>6} {'refgain':>7} {'jpeg75':>6} {'refjpg':>6} "
          f"{'resize':>6} {'refrsz':>6} {'s/img':>6}  step reaching ref gain (eps 4,5,6; interpolated)")
    for name, s in cands.items():
        r, traj = run(E, enc, x, styles, s, 0)
        reach = []
        for ref in curve[1:4]:
            reach.append(steps_to_reach(traj, ref["target_gain"]))
        reach.append(steps_to_reach(traj, interp(curve, r["psnr"], "target_gain")))
        print(f"{name:12} {r['psnr']:6.2f} {r['ssim']:6.4f} {r['target_gain']:6.4f} "
              f"{interp(curve, r['psnr'], 'target_gain'):7.4f} {r['gain_jpeg75']:6.4f} "
              f"{interp(curve, r['psnr'], 'gain_jpeg75'):6.4f} {r['gain_resize05']:6.4f} "
              f"{interp(curve, r['psnr'], 'gain_resize05'):6.4f} {r['sec_img']:6.2f}  {reach}", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
