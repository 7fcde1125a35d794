"""Calibration of the reports' perfect-mimic readout (engine/perfect_mimic.py) on TAEF2: what does it read for
cloaks and poisons whose effect the trained benches measured?

Question: the reports of GlazePerturb and NightshadePoison say, per image, how far the picture a perfect mimic
would draw (the decoded cloaked latent) moved from the original's toward the target's (0..1, pixel style; above
0.5 it reads nearer the target). Which values do the pack's own cloaks and poisons get, so the report's wording and
its warnings sit where the trained benches put the line?

Rows, on the development set (bench/devset.py, 8 pictures at 128², TAEF2 with its decoder, seed 0):
- glaze default / faster: GlazePerturb's presets (the decoded objective on), toward each picture's target;
- glaze latent-only: the same without the decoded objective (what a VAE without its decoder used to get);
- reference PGD: the plain L∞ sign PGD at 4/255, 100 steps (the trained mimic moved less under it);
- poison default: NightshadePoison's default preset, flat-colour pictures (A) toward line-art anchors (B), as
  bench/bench_poison.py poisons A toward B (its trained model learned no B from these: A->B 0.000);
- poison 64/255: a custom L∞ budget of 64/255 (a poison strong enough to read as B).

    .host/venv/bin/python bench/bench_readout.py [--size 128] [--rows glaze_default,poison_default,...]

Prints per row the readout's mean, min and max over the pictures, and the share of pictures above 0.5. About 5 min
on 2 CPU cores (fp32). No cache: nothing here trains.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import common
import devset


def rows(E):
    glaze = E.CloakOptions().settings()
    return {
        "glaze_default": ("glaze", glaze),
        "glaze_faster": ("glaze", E.CloakOptions(render_quality="faster").settings()),
        "glaze_latent_only": ("glaze", E.CloakOptions(decoded=False).settings()),
        "reference_pgd": ("glaze", E.reference_settings(4 / 255, 100)),
        "poison_default": ("poison", E.CloakOptions(kind="nightshade").settings()),
        "poison_64": ("poison", dataclasses.replace(E.settings_for("custom", custom_eps=64 / 255, budget="linf",
                                                                   kind="nightshade"), steps=200)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rows", default="")
    args = ap.parse_args()
    pack = common.load_host()
    E = pack.engine
    from importlib import import_module
    NS = import_module("ComfyUI-Cloak.engine.nightshade")
    member = common.tae("taef2")
    if member.decode is None:
        raise SystemExit("TAEF2's decoder is missing from the shared models folder: the readout needs it")
    enc = E.as_ensemble(member)
    x, t, kinds = devset.devset(args.size)
    a = x[[kinds.index("flat"), kinds.index("flat_scene")]]
    b = x[[kinds.index("lineart"), kinds.index("comic")]]
    chosen = rows(E)
    if args.rows:
        chosen = {k: chosen[k] for k in args.rows.split(",")}
    print(f"TAEF2, devset at {args.size}², fp32 passes (native bf16: "
          f"{import_module('ComfyUI-Cloak.engine.precision').cpu_has_fast_bf16()})")
    print(f"{'row':<20} {'mean':>6} {'min':>6} {'max':>6} {'> 0.5':>6} {'PSNR':>6} {'s/img':>6}")
    for name, (kind, settings) in chosen.items():
        start = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():
            if kind == "glaze":
                target = E.make_style_target(enc, t, "per_image", lambda p: p)
                res = E.cloak_images(x, enc, E.glaze_objectives(enc, target, x.shape[0]), settings)
            else:
                res = NS.poison_images(a, enc, b, settings).cloak
        shares = torch.tensor([r["mimic_share"] for r in res.reports])
        psnr = sum(r["psnr"] for r in res.reports) / len(res.reports)
        secs = (time.perf_counter() - start) / len(res.reports)
        print(f"{name:<20} {shares.mean():6.3f} {shares.min():6.3f} {shares.max():6.3f} "
              f"{float((shares > 0.5).float().mean()):6.2f} {psnr:6.2f} {secs:6.1f}", flush=True)


if __name__ == "__main__":
    main()
