"""GlazePerturb against the reference loop, on the real pretrained TAEF2 (the preset table
behind engine/cloak.py's TYPICAL_GAIN).

Sections (``--sections``, comma-separated; default all, in this order):

  taef2     the development set (bench/devset.py: 8 images at 256², flat colour, line art, cel/anime, painting,
            photos, comic) at every intensity preset, each image matched in PSNR with the reference loop
            (PhotoGuard-style L∞ sign PGD to the same target latent, same steps, no EOT, at the 8-bit level
            nearest the preset's PSNR; GlazePerturb then runs with its PSNR ceiling on that image's reference
            PSNR). Clean target gain, gain after a real JPEG q75, after a TAEF2 decode→encode round trip, after a
            0.5× resize; SSIM; ratios ours/reference of the set means; and, on the flat-colour and line-art
            images, the mean absolute change in flat regions vs textured ones (engine.metrics.change_by_region).
  taef2-512 the two 512² development images, default preset, the same columns.
  transfer  cloaks made against TAEF2 scored on TAESANA (a different latent space, ÷32) and the other way round,
            and an ensemble of both, at intensity default: gain on each encoder, transfer share, ensemble share.

    .host/venv/bin/python bench/bench_glaze.py                          # everything (CPU, 2 cores: about 1 h)
    .host/venv/bin/python bench/bench_glaze.py --sections taef2 --presets default
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import torch

import common
import devset
import glaze_eval as G

KEYS = ("psnr", "ssim", "haarpsi", "gmsd", "gain", "gain_jpeg75", "gain_roundtrip", "gain_resize05", "sec")
RATIO_KEYS = ("ssim", "gain", "gain_jpeg75", "gain_roundtrip", "gain_resize05")


def section_taef2(E, enc, size, presets, steps, kinds=None):
    member = enc.members[0]
    roundtrip = lambda y: member.decode(member(y))  # noqa: E731
    x, t, kinds = devset.devset(size, kinds)
    summary = {}
    for preset in presets:
        settings = E.settings_for(preset, "default", "on")
        if steps:
            settings = dataclasses.replace(settings, steps=steps)
        print(f"\n== TAEF2 (real, pretrained), {size}², preset {preset}, {settings.steps} steps, robustness on; "
              f"{len(kinds)} development images, each PSNR-matched with the reference ==", flush=True)
        print(f"{'image':16} {'method':6} " + " ".join(f"{k:>14}" for k in KEYS) + f" {'eps/255':>8} "
              f"{'flat |d|':>9} {'texture |d|':>11}")
        ours_rows, ref_rows, flat_ratios = [], [], []
        for i, kind in enumerate(kinds):
            rows = G.matched_pair(E, enc, x[i:i + 1], t[i:i + 1], settings, roundtrip=roundtrip)
            for name in ("ours", "ref"):
                r = rows[name]
                flat, tex = (float(v[0]) * 255 for v in E.metrics.change_by_region(x[i:i + 1], r["image"]))
                r["flat"], r["textured"] = flat, tex
                print(f"{kind:16} {name:6} " + " ".join(f"{r[k]:14.4f}" for k in KEYS)
                      + f" {r['eps_255'] if name == 'ref' else settings.eps * 255:8.1f} {flat:9.3f} {tex:11.3f}",
                      flush=True)
            ours_rows.append(rows["ours"])
            ref_rows.append(rows["ref"])
            if kind in devset.FLAT_KINDS and not math.isnan(rows["ours"]["flat"]):
                flat_ratios.append((kind, rows["ours"]["flat"] / rows["ours"]["textured"]))
        ours, ref = G.mean_rows(ours_rows, KEYS), G.mean_rows(ref_rows, KEYS)
        ratio = {k: ours[k] / ref[k] if ref[k] else math.nan for k in RATIO_KEYS}
        print(G.fmt_table(f"-- means over the set, preset {preset}", [("GlazePerturb", ours), ("reference", ref)], KEYS))
        print(f"ratio ours/reference at matched PSNR: " + ", ".join(f"{k} {ratio[k]:.3f}" for k in RATIO_KEYS))
        print("flat-region change / textured-region change (flat-colour and line-art images): "
              + ", ".join(f"{k} {v:.3f}" for k, v in flat_ratios)
              + (f"; worst {max(v for _, v in flat_ratios):.3f} (goal <= 0.25)" if flat_ratios else ""), flush=True)
        summary[preset] = (ours, ref, ratio, flat_ratios)
    return summary


def section_transfer(E, f2, sana, size, steps, kinds=None):
    """Transfer both ways and the ensemble's cost, at intensity default on the development set."""
    x, t, kinds = devset.devset(size, kinds)
    settings = E.settings_for("default", "default", "on")
    if steps:
        settings = dataclasses.replace(settings, steps=steps)
    both = f2.extend(sana.members[0])
    print(f"\n== transfer at {size}², intensity default, {settings.steps} steps: gain on each encoder of a cloak made "
          f"against TAEF2, TAESANA, or both (ensemble, equal weights) ==", flush=True)
    print(f"{'image':16} {'made for':9} {'gain TAEF2':>11} {'gain TAESANA':>13} {'PSNR':>7}")
    sums = {}
    for i, kind in enumerate(kinds):
        xi, ti = x[i:i + 1], t[i:i + 1]
        for label, enc in (("TAEF2", f2), ("TAESANA", sana), ("both", both)):
            img, rep = G.cloak(E, enc, xi, ti, settings)
            g_f2 = float(G.gains(E, f2, xi, img, ti)["gain"][0])
            g_sana = float(G.gains(E, sana, xi, img, ti)["gain"][0])
            print(f"{kind:16} {label:9} {g_f2:11.4f} {g_sana:13.4f} {rep['psnr']:7.2f}", flush=True)
            acc = sums.setdefault(label, [0.0, 0.0])
            acc[0] += g_f2 / len(kinds)
            acc[1] += g_sana / len(kinds)
    (f2_own, f2_to_sana), (sana_to_f2, sana_own), (both_f2, both_sana) = sums["TAEF2"], sums["TAESANA"], sums["both"]
    print(f"means: made for TAEF2 -> TAEF2 {f2_own:.4f}, TAESANA {f2_to_sana:.4f}; made for TAESANA -> TAESANA "
          f"{sana_own:.4f}, TAEF2 {sana_to_f2:.4f}; both -> TAEF2 {both_f2:.4f}, TAESANA {both_sana:.4f}")
    print(f"transfer share (other encoder's gain / own gain): TAEF2->TAESANA {f2_to_sana / f2_own:.3f}, "
          f"TAESANA->TAEF2 {sana_to_f2 / sana_own:.3f} (goal >= 0.5)")
    print(f"ensemble share (ensemble's gain / single-encoder gain): TAEF2 {both_f2 / f2_own:.3f}, "
          f"TAESANA {both_sana / sana_own:.3f} (goal >= 0.9)", flush=True)
    return sums


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="taef2,taef2-512,transfer")
    ap.add_argument("--presets", default="low,default,high")
    ap.add_argument("--steps", type=int, default=0, help="steps per cloak (default: the preset's, 100)")
    ap.add_argument("--size", type=int, default=256, help="side of the development images (taef2, transfer)")
    ap.add_argument("--kinds", default="", help="comma-separated development images (default: the whole set)")
    args = ap.parse_args()
    sections = args.sections.split(",")
    E = G.engine()
    torch.manual_seed(0)
    kinds = tuple(k for k in args.kinds.split(",") if k) or None
    if "taef2" in sections or "taef2-512" in sections or "transfer" in sections:
        f2 = E.as_ensemble(common.tae("taef2"))
        if "taef2" in sections:
            section_taef2(E, f2, args.size, args.presets.split(","), args.steps, kinds)
        if "taef2-512" in sections:
            section_taef2(E, f2, 512, ["default"], args.steps)
        if "transfer" in sections:
            section_transfer(E, f2, E.as_ensemble(common.tae("taesana")), args.size, args.steps, kinds)

if __name__ == "__main__":
    main()
