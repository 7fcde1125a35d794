"""Fewer passes for the same protection: short-run variants of the default cloak side by side with it.

Each variant is GlazePerturb's engine path (intensity default, robustness on, TAEF2 with its decoder, the passes'
precision automatic as the nodes run them) with some settings changed, written ``name:key=value:key=value``
(keys are engine.cloak.CloakSettings fields, values parse as int, float or text; ``quality=faster`` starts from that
render quality instead of default; a bare render quality name is that preset).
Every variant cloaks the same development images (bench/devset.py: the eight 256² kinds, the two 512² ones) and is
scored on the whole TAEF2 in float32: PSNR, SSIM, target gain clean, after a real JPEG q75 and after the TAEF2
round trip, seconds per image; then each variant's means and its ratios to the first variant, and a row for plain
PGD (``reference``: L∞ sign PGD, 100 steps, at the 8-bit level nearest the first variant's mean PSNR). ``pgdN``:
plain PGD at the 8-bit level N; with such rows each variant is also set, per image, beside the level whose PSNR is
nearest its own (HaarPSI and GMSD at matched change, issue 40).

    .host/venv/bin/python bench/bench_fast.py --sizes 256 --variants default,faster,s25:steps=25
    .host/venv/bin/python bench/bench_fast.py --sizes 256,512 --variants default,faster,reference

Cloaks are cached per variant, settings and image under bench/out/fast/ (the key holds the settings, so a changed
variant cloaks again; delete the folder after changing the engine). Run one bench at a time (2 shared cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import devset  # noqa: E402
import glaze_eval as G  # noqa: E402
import bench_mimicry as BM  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "fast")
KEYS = ("psnr", "ssim", "haarpsi", "gmsd", "gain", "gain_jpeg75", "gain_roundtrip", "sec")


def variant(E, spec: str):
    """(name, settings) of ``name[:key=value...]``; a bare name is a render quality preset or 'default'."""
    name = spec.split(":")[0]
    quality = next((p.partition("=")[2] for p in spec.split(":")[1:] if p.startswith("quality=")),
                   name if name in E.RENDER_QUALITY else "default")
    s = dataclasses.replace(E.settings_for("default", quality, "on"), precision="auto")
    return name, dataclasses.replace(s, **G.changes(s, spec))


def cached_cloak(E, enc, name, settings, x, t, kind, size):
    key = hashlib.sha1((repr(settings) + kind).encode() + x.numpy().tobytes()[:4096]).hexdigest()[:12]
    path = os.path.join(OUT, f"{size}", f"{name}-{kind}-{key}.pt")
    if os.path.isfile(path):
        got = torch.load(path, weights_only=True)
        return got["image"], got["seconds"]
    start = time.perf_counter()
    img = G.cloak(E, enc, x, t, settings)[0]
    sec = time.perf_counter() - start
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"image": img, "seconds": sec}, path)
    return img, sec


def scored(E, enc, name, settings, x, t, kind, size, roundtrip) -> dict:
    """One (cached) cloak of ``x`` scored: PSNR, SSIM, the gains of glaze_eval.gains, seconds; printed as a line."""
    img, sec = cached_cloak(E, enc, name, settings, x, t, kind, size)
    g = G.gains(E, enc, x, img, t, roundtrip=roundtrip)
    seen = E.metrics.visibility(x, img)
    row = dict(psnr=float(E.psnr(img, x)[0]), ssim=float(E.ssim(img, x)[0]), sec=sec,
               haarpsi=seen["haarpsi"][0], gmsd=seen["gmsd"][0], **{k: float(v.mean()) for k, v in g.items()})
    print(f"{size}² {kind:16} {name:14} psnr {row['psnr']:.2f} ssim {row['ssim']:.3f} haarpsi {row['haarpsi']:.3f} "
          f"gmsd {row['gmsd']:.4f} gain {row['gain']:.4f}"
          f" jpeg75 {row['gain_jpeg75']:.4f} round trip {row['gain_roundtrip']:.4f} {sec:7.1f} s", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256")
    ap.add_argument("--variants", default="default,faster,reference")
    ap.add_argument("--images", type=int, default=0, help="only the first N development images per size (0: all)")
    args = ap.parse_args()
    E = common.load_host().engine
    member = BM.taef2_with_decoder("the fast-path bench")
    enc = E.as_ensemble(member)
    roundtrip = lambda p: member.decode(member(p))  # noqa: E731
    specs = args.variants.split(",")
    if any("warm_start" in spec for spec in specs):
        from importlib import import_module
        W = import_module(E.__name__ + ".warmstart")
        member.warm_start = W.for_encoder(member.name, os.path.join(common.ROOT, "models", "warmstart"))
        if member.warm_start is None:
            raise SystemExit(f"no warm start for {member.name} in models/warmstart: run scripts/train_warmstart.py")
    print(f"torch threads {torch.get_num_threads()}, bf16 fast: {E.precision.cpu_has_fast_bf16()}", flush=True)
    for size in (int(v) for v in args.sizes.split(",")):
        x_all, t_all, kinds = devset.devset(size)
        if args.images:
            x_all, t_all, kinds = x_all[:args.images], t_all[:args.images], kinds[:args.images]
        rows = {}
        levels = [s for s in specs if s.startswith("pgd") and s[3:].isdigit()]  # plain PGD at given 8-bit levels
        named = [variant(E, s) for s in specs if s != "reference" and s not in levels]
        for j, kind in enumerate(kinds):
            x, t = x_all[j:j + 1], t_all[j:j + 1]
            for name, s in named:
                rows.setdefault(name, []).append(scored(E, enc, name, s, x, t, kind, size, roundtrip))
        if "reference" in specs and named:
            first = named[0][0]
            level = G.reference_level(sum(r["psnr"] for r in rows[first]) / len(rows[first]))
            ref = dataclasses.replace(E.reference_settings(level / 255, 100), precision="auto")
            for j, kind in enumerate(kinds):
                x, t = x_all[j:j + 1], t_all[j:j + 1]
                rows.setdefault("reference", []).append(
                    scored(E, enc, f"reference{level}", ref, x, t, kind, size, roundtrip))
        for lv in levels:
            ref = dataclasses.replace(E.reference_settings(int(lv[3:]) / 255, 100), precision="auto")
            for j, kind in enumerate(kinds):
                x, t = x_all[j:j + 1], t_all[j:j + 1]
                rows.setdefault(lv, []).append(scored(E, enc, f"reference{lv[3:]}", ref, x, t, kind, size, roundtrip))
        names = [n for n, _ in named] + (["reference"] if "reference" in specs else []) + levels
        means = {n: G.mean_rows(rows[n], KEYS) for n in names}
        print(G.fmt_table(f"\n{size}², means over {len(kinds)} development images (TAEF2, fp32 scoring)",
                          [(n, means[n]) for n in names], KEYS))
        base = means[names[0]]
        print(f"ratios to {names[0]}: " + "; ".join(
            f"{n}: gain {means[n]['gain'] / base['gain']:.3f}, jpeg75 {means[n]['gain_jpeg75'] / base['gain_jpeg75']:.3f}, "
            f"round trip {means[n]['gain_roundtrip'] / base['gain_roundtrip']:.3f}, "
            f"psnr {means[n]['psnr'] - base['psnr']:+.2f} dB, time {means[n]['sec'] / base['sec']:.2f}x"
            for n in names[1:]), flush=True)
        if levels:
            matched(named, levels, rows, kinds)


def matched(named, levels, rows, kinds):
    """Per image, each variant beside plain PGD at the level (of ``levels``) whose PSNR is nearest its own: is the
    variant at least as unseen by HaarPSI (higher) and GMSD (lower)?"""
    print(f"\nagainst plain PGD at the level of {','.join(levels)} whose PSNR is nearest, per image:")
    for name, _ in named:
        wins = [0, 0]
        for j, kind in enumerate(kinds):
            own = rows[name][j]
            lv = min(levels, key=lambda n: abs(rows[n][j]["psnr"] - own["psnr"]))
            ref = rows[lv][j]
            wins[0] += own["haarpsi"] >= ref["haarpsi"]
            wins[1] += own["gmsd"] <= ref["gmsd"]
            print(f"  {kind:16} {name:10} PSNR {own['psnr']:.2f} / {lv} {ref['psnr']:.2f}  HaarPSI {own['haarpsi']:.3f} / "
                  f"{ref['haarpsi']:.3f}  GMSD {own['gmsd']:.4f} / {ref['gmsd']:.4f}")
        print(f"  {name}: HaarPSI >= PGD's on {wins[0]}/{len(kinds)}, GMSD <= PGD's on {wins[1]}/{len(kinds)}", flush=True)


if __name__ == "__main__":
    main()
