"""Cloaking at artists' file sizes: time, memory and protection from 512² to 4096², tiled and whole.

Sections (``--sections``, comma-separated; default all, in this order):

  scale       TAEF2 (real weights) and the full-size SD1.x VAE architecture (random weights: timing and memory
              only) at 512², 1024², 2048², 4096²: seconds per step, fixed seconds per image (calibration,
              targets, the final SSIM/PSNR check and report), peak memory (RSS on CPU), seconds per megapixel
              per step, for the automatic settings (tiles, precision) and, where it fits, the whole image in
              one pass. A few steps per size (``--scale-steps``); a default (faster) cloak's time is fixed + the
              preset's steps (engine.cloak.RENDER_QUALITY) × per step: both presets step alike.
  protection  the same development images at ``--sizes`` (default 512,1024) cloaked at intensity default by
              variants of the method, each scored on the *whole* TAEF2 in float32 (no tiles): target gain,
              gain after a real JPEG q75, PSNR, SSIM, seconds; ratios to the full-resolution 100-step float32
              whole-image cloak ("full").
  estimate    the up-front estimate of a default cloak (TAEF2, automatic tiles and precision, what the nodes log
              and report) against its measured time (fixed + 100 × per step, from ``--estimate-steps``-step runs)
              at ``--estimate-sizes`` (default 512,1024,2048).
  batch       8 development images at 512² in one cloak_images call (one queued run of a folder) against 8
              calls made one at a time, each with its own style target and cost estimate as a queued run has.
  vae         the full-size VAE architectures users load (scripts/full_vaes.py: SD1.5, SDXL, SD3, FLUX.1, FLUX.2
              shapes from ComfyUI's own classes, random weights: time and memory only, never protection) through
              LoadVAEEncoder's adapter with their decoders, GlazePerturb's default settings (decoded objective
              and style term, robustness on, automatic tiles and precision) at ``--vae-sizes`` (512,1024):
              seconds per step, fixed seconds, peak memory (CPU RSS), and the up-front estimate of the default
              cloak against fixed + its steps x per step (``--vae-steps`` steps run, 4 by default: the step
              intervals timed then hold one refresh of the default's decoded term, made on one pass in 3;
              ``--archs``).
  vae_seams   the tiled against the whole cloak of one 512² picture through the SD1.5-shaped VAE (tiles of 256,
              ``--vae-steps`` steps, decoded objective on): the change's energy at the tile borders over the rest
              (engine.tiling.border_energy_ratio, 1.0 = no seam) for both. Random weights: mechanics only.

    .host/venv/bin/python bench/bench_scale.py --sections scale --models taef2
    .host/venv/bin/python bench/bench_scale.py --sections protection --sizes 1024 --variants full,fast
    .host/venv/bin/python bench/bench_scale.py --sections estimate
    .host/venv/bin/python bench/bench_scale.py --sections vae --archs sd15,sdxl,sd3,flux1,flux2 --vae-sizes 512,1024

Run one bench at a time (2 shared cores): figures are ratios within one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

import common
import devset

sys.path.insert(0, os.path.join(common.ROOT, "scripts"))  # full_vaes
import glaze_eval as G

SCALE_SIZES = (512, 1024, 2048, 4096)


def kinds_for(size):
    return ("flat_scene", "lineart", "painting", "photo_astronaut")


def images_at(size, kinds):
    import numpy as np
    xs = [torch.from_numpy(np.ascontiguousarray(devset.image(k, size))).permute(2, 0, 1)[None] for k in kinds]
    x = torch.cat(xs)
    return x, devset.targets_for(x, list(kinds))


def settings(E, **kw):
    return dataclasses.replace(E.settings_for("default", "default", "on"), **kw)


# ---------------------------------------------------------------------------------------------------- scale
def timed_cloak(E, enc, x, t, s):
    """(total seconds, seconds per step, fixed seconds, peak MiB, report) of one cloak of ``x``."""
    stamps = []
    pad = E.padder(*x.shape[-2:], enc.multiple)
    device = enc.members[0].device
    with common.PeakMemory(device) as mem:
        start = time.perf_counter()
        target = E.make_style_target(enc, t, "per_image", pad)

        def make_objective(i, padded):
            return E.objective_for_target(enc, target, i, E.latent_sizes(enc, padded))

        with torch.enable_grad():
            res = E.cloak_images(x, enc, make_objective, s,
                                 hooks=E.Hooks(on_step=lambda *a: stamps.append(time.perf_counter())))
        total = time.perf_counter() - start
    steps = len(stamps)
    per_step = (stamps[-1] - stamps[0]) / (steps - 1) if steps > 1 else total
    return total, per_step, total - per_step * steps, mem.peak_mib, res.reports[0]


def section_scale(E, models, sizes, steps_at, only_auto=False):
    print("\n== scale: seconds per step and per megapixel, peak memory (CPU RSS), intensity default, "
          "robustness on ==")
    print(f"{'model':10} {'size':>6} {'mode':>12} {'prec':>5} {'tiles':>5} {'steps':>5} {'s/step':>8} "
          f"{'s/MP/step':>9} {'fixed s':>8} {'default min':>11} {'faster min':>10} {'peak GiB':>8}")
    default_steps, faster_steps = E.RENDER_QUALITY["default"], E.RENDER_QUALITY["faster"]
    rows = {}
    for name in models:
        enc = E.as_ensemble(common.tae("taef2") if name == "taef2" else sd_encoder(E))
        for size in sizes:
            x, t = images_at(size, ("photo_astronaut",))
            modes = [("auto", dict(precision="auto"))]
            if size <= 2048 and name == "taef2" and not only_auto:
                modes.append(("whole", dict(precision="auto", tile=-1)))
            if size == 512 and name == "taef2" and not only_auto:
                modes.append(("whole fp32", dict(precision="fp32", tile=-1)))
            if name == "sd-arch" and size >= 1024:
                modes = []
                per_tile, n_tiles, peak = partial_step(E, enc, x, 3)
                per_step = per_tile * n_tiles
                rows[(name, size, "auto")] = per_step / (size * size / 1e6)
                print(f"{name:10} {size:>5}² {'auto (3 tiles)':>12} {'-':>5} {n_tiles:>5} {'-':>5} {per_step:8.1f} "
                      f"{per_step / (size * size / 1e6):9.2f} {'-':>8} {default_steps * per_step / 60:11.0f} "
                      f"{faster_steps * per_step / 60:10.0f} {peak / 1024:8.2f}"
                      "   (one step's first 3 tile passes under a JPEG draw, whole-image tensors allocated; "
                      "s/step = s/tile x tiles)", flush=True)
            for mode, kw in modes:
                n = steps_at(size) if name == "taef2" else 2
                total, per_step, fixed, peak, rep = timed_cloak(E, enc, x, t, settings(E, steps=n, **kw))
                mp = size * size / 1e6
                rows[(name, size, mode)] = per_step / mp
                print(f"{name:10} {size:>5}² {mode:>12} {E.precision.resolve(kw['precision'], 'cpu').__repr__()[6:]:>5} "
                      f"{rep['tiles']:>5} {n:>5} {per_step:8.2f} {per_step / mp:9.2f} {fixed:8.1f} "
                      f"{(fixed + default_steps * per_step) / 60:11.1f} {(fixed + faster_steps * per_step) / 60:10.1f} "
                      f"{peak / 1024:8.2f}", flush=True)
        if (name, 512, "auto") in rows and (name, 2048, "auto") in rows:
            print(f"{name}: s/MP per step at 2048² / at 512² (auto) = "
                  f"{rows[(name, 2048, 'auto')] / rows[(name, 512, 'auto')]:.2f}")
    return rows


def partial_step(E, enc, x, k):
    """Seconds per tile pass and peak MiB of the first ``k`` tiles of one tiled step on ``x`` (automatic tiles and
    precision), with everything a whole step holds allocated: the image, δ, the budget's caps, the gradient
    buffer, and a whole-image JPEG draw (the EOT draw with the biggest backward graph). For encoders too slow to
    run whole steps of at 1024² and up here (the SD1.x architecture)."""
    from importlib import import_module
    tiling = import_module("ComfyUI-Cloak.engine.tiling")
    transforms = import_module("ComfyUI-Cloak.engine.transforms")
    precision = import_module("ComfyUI-Cloak.engine.precision")
    cloak = import_module("ComfyUI-Cloak.engine.cloak")
    s = settings(E, precision="auto")
    device = enc.members[0].device
    with common.PeakMemory(device) as mem:
        h, w = x.shape[-2:]
        side = cloak.tile_side(s, h, w, None, device.type)
        plan = tiling.plan_tiles(h, w, side, s.margin, enc.multiple)
        f = enc.multiple
        targets = [torch.randn(1, 4, h // f, w // f)]
        fast = E.EncoderEnsemble(precision.autocast_members(enc.members, s.precision, device))
        obj = E.LatentMatch(fast, targets)
        obj.set_start(torch.ones(1, 1))  # timing only: no calibration pass
        budget = s.make_budget()
        budget.setup(x)
        delta = torch.zeros_like(x)
        eot = transforms.EOT(p_identity=0.0, kinds=("jpeg",))
        grad = tiling.TiledGradient(obj, plan[:k])
        start = time.perf_counter()
        with torch.enable_grad():
            g, _ = grad(x + delta, eot, torch.Generator().manual_seed(0), 1, 0.0)
        sec = time.perf_counter() - start
    return sec / k, len(plan), mem.peak_mib


def sd_encoder(E, arch: str = "sd15", keep_decoder: bool = False):
    """A full-size VAE architecture with random weights (scripts/full_vaes.py) through the pack's VAE adapter."""
    import importlib
    import full_vaes
    adapters = importlib.import_module("ComfyUI-Cloak.nodes.comfy_adapters")
    return adapters.vae_encoder(full_vaes.build_vae(arch), "fp32", keep_decoder=keep_decoder)


# ------------------------------------------------------------------------------------------------------ vae
def section_vae(E, archs, sizes, steps):
    print(f"\n== vae: full-size VAE architectures (random weights: time and memory only), GlazePerturb default "
          f"(decoded objective + style term, robustness on, auto tiles/precision), {steps} steps run ==")
    s = settings(E, precision="auto")
    if (steps - 1) % s.decoded_every:
        print(f"note: {steps - 1} timed step intervals hold a part of the decoded term's {s.decoded_every}-pass "
              f"cycle: the per-step time leans toward {'refresh' if steps - 1 < s.decoded_every else 'plain'} steps")
    print(f"{'arch':6} {'size':>6} {'tiles':>5} {'s/step':>8} {'fixed s':>8} {'peak GiB':>8} {'est GiB':>7} "
          f"{f'measured {s.steps}-step':>17} {'estimated':>9} {'est/meas':>8}")
    for arch in archs:
        enc = E.as_ensemble(sd_encoder(E, arch, keep_decoder=True))
        for size in sizes:
            x, t = images_at(size, ("photo_astronaut",))
            with common.PeakMemory(enc.members[0].device) as mem:
                r = G.estimate_against_run(E, enc, x, t, s, steps, free_bytes())
            est = r["estimate"]
            print(f"{arch:6} {size:>5}² {r['report']['tiles']:>5} {r['per_step']:8.1f} {r['fixed']:8.1f} "
                  f"{mem.peak_mib / 1024:8.2f} {est.peak_bytes / 2**30:7.2f} {r['measured'] / 60:15.0f} min "
                  f"{est.seconds / 60:7.0f} min {est.seconds / r['measured']:8.2f}", flush=True)
        del enc


def section_vae_seams(E, steps):
    enc = E.as_ensemble(sd_encoder(E, "sd15", keep_decoder=True))
    x, t = images_at(512, ("photo_astronaut",))
    target = E.make_style_target(enc, t, "per_image", E.padder(512, 512, enc.multiple))
    out = {}
    for name, tile in (("whole", -1), ("tiled", 256)):
        s = settings(E, precision="auto", steps=steps, tile=tile)
        with torch.enable_grad():
            res = E.cloak_images(x, enc, E.glaze_objectives(enc, target), s)
        out[name] = (border_ratio(res.images - x, 256), res.reports[0])
    print(f"\n== vae_seams: SD1.5-shaped VAE (random weights), 512², {steps} steps, decoded objective on ==")
    for name, (ratio, rep) in out.items():
        print(f"{name:6} tiles {rep['tiles']:>2}: border/inner change energy {ratio:.2f}, PSNR {rep['psnr']:.2f}, "
              f"target gain {rep['target_gain']:.3f}")


# ------------------------------------------------------------------------------------------------- estimate
def free_bytes() -> float:
    """What the nodes pass as free memory on a CPU (ComfyUI's get_free_memory: psutil's available memory)."""
    try:
        import psutil
        return float(psutil.virtual_memory().available)
    except ImportError:
        return 16 * 2.0**30


def section_estimate(E, sizes, steps_at):
    from importlib import import_module
    est = import_module("ComfyUI-Cloak.engine.estimate")
    enc = E.as_ensemble(common.tae("taef2"))
    print("\n== estimate: the up-front time estimate of a default cloak (100 steps; robustness on, and off at the "
          "first size; automatic tiles and precision) against the measured time ==")
    print(f"{'size':>6} {'robust':>6} {'tiles':>5} {'steps run':>9} {'s/step':>8} {'fixed s':>8} {'measured s':>10} "
          f"{'estimated s':>11} {'est/meas':>8}")
    for size, robustness in [(size, "on") for size in sizes] + [(sizes[0], "off")]:
        x, t = images_at(size, ("photo_astronaut",))
        s = settings(E, precision="auto", robustness=robustness)
        est._PROBES.clear()  # as a fresh process would: the probe is part of what a first run pays
        with torch.enable_grad():
            estimate = E.CloakJob(x, enc, s).plan(free_bytes())
        probed = est.probe(enc, precision=s.precision, decoded=s.decoded_weight + s.decoded_style > 0,
                             styled=s.decoded_style > 0)
        target = E.make_style_target(enc, t, "per_image", E.padder(size, size, enc.multiple))
        n = steps_at(size)
        stamps = []
        with torch.enable_grad():
            job = E.CloakJob(x, enc, dataclasses.replace(s, steps=n))
            job.plan(free_bytes())
            start = time.perf_counter()
            res = job.run(E.glaze_objectives(enc, target), 0, E.Hooks(on_step=lambda *a: stamps.append(time.perf_counter())))
            total = time.perf_counter() - start
        per_step = (stamps[-1] - stamps[0]) / (n - 1)
        fixed = total - per_step * n
        measured = fixed + s.steps * per_step
        print(f"{size:>5}² {robustness:>6} {res.reports[0]['tiles']:>5} {n:>9} {per_step:8.2f} {fixed:8.1f} {measured:10.0f} "
              f"{estimate.seconds:11.0f} {estimate.seconds / measured:8.2f}   (estimate: {estimate.tiles} tiles, "
              f"probe {probed.seconds_per_pixel * 1e6:.2f} s/MP per pass)", flush=True)


# ----------------------------------------------------------------------------------------------- protection
VARIANTS = {
    "full": dict(precision="fp32", tile=-1),                      # the yardstick: 100 steps, fp32, one pass
    "bf16": dict(precision="bf16", tile=-1),
    "tiled": dict(precision="fp32"),                               # tiles of 512 (auto on CPU) above 512²
    "tiled256": dict(precision="fp32", tile=256),
    "auto": dict(precision="auto"),                                # tiles + bf16: what a user gets, no c2f
    "auto50": dict(precision="auto", steps=50),                    # half the steps, same schedule
}


def section_protection(E, sizes, variants, kinds, steps):
    enc = E.as_ensemble(common.tae("taef2"))
    member = enc.members[0]
    roundtrip = (lambda p: member.decode(member(p))) if member.decode is not None else None
    keys = ("psnr", "ssim", "haarpsi", "gmsd", "gain", "gain_jpeg75", "gain_roundtrip", "sec")
    for size in sizes:
        x_all, t_all = images_at(size, kinds)
        results = {v: [] for v in variants}
        for j, kind in enumerate(kinds):
            x, t = x_all[j:j + 1], t_all[j:j + 1]
            for v in variants:
                s = settings(E, **{"steps": steps, **VARIANTS[v]})
                t0 = time.perf_counter()
                img, rep = G.cloak(E, enc, x, t, s)
                sec = time.perf_counter() - t0
                g = G.gains(E, enc, x, img, t, roundtrip=roundtrip)
                row = dict(psnr=rep["psnr"], ssim=rep["ssim"], sec=sec, tiles=rep["tiles"],
                           haarpsi=rep.get("haarpsi", float("nan")), gmsd=rep.get("gmsd", float("nan")),
                           **{k: float(val.mean()) for k, val in g.items()})
                results[v].append(row)
                # the same bands for every variant: a whole-image cloak's ratio is the content's own baseline
                side = 256 if v == "tiled256" or size <= 512 else 512
                seam = border_ratio(img - x, side)
                print(f"{size}² {kind:16} {v:9} tiles {rep['tiles']:>2} psnr {row['psnr']:.2f} ssim {row['ssim']:.3f} "
                      f"haarpsi {row['haarpsi']:.3f} gmsd {row['gmsd']:.4f} "
                      f"gain {row['gain']:.4f} jpeg75 {row['gain_jpeg75']:.4f} "
                      f"round trip {row.get('gain_roundtrip', float('nan')):.4f} {sec:7.1f} s"
                      + f"  border/inside energy ({side} px plan) {seam:.3f}", flush=True)
        means = {v: G.mean_rows(results[v], keys) for v in variants}
        print(G.fmt_table(f"\nprotection at {size}², {steps} steps, intensity default, means over {len(kinds)} images "
                          "(scored on whole TAEF2, fp32)", [(v, means[v]) for v in variants], keys))
        yardstick = next((v for v in ("full", "auto", "bf16") if v in means), None)
        if yardstick is not None:
            base = means[yardstick]
            print(f"(ratios to {yardstick})")
            print("ratios: " + "; ".join(
                f"{v}: gain {means[v]['gain'] / base['gain']:.3f}, jpeg75 {means[v]['gain_jpeg75'] / base['gain_jpeg75']:.3f}, "
                f"round trip {means[v]['gain_roundtrip'] / base['gain_roundtrip']:.3f}, "
                f"psnr {means[v]['psnr'] - base['psnr']:+.2f} dB, time {means[v]['sec'] / base['sec']:.2f}x"
                for v in variants if v != yardstick))


def border_ratio(change: torch.Tensor, tile: int) -> float:
    """engine.tiling.border_energy_ratio on the automatic plan's borders (cores of about ``tile`` px)."""
    from importlib import import_module
    tiling = import_module("ComfyUI-Cloak.engine.tiling")
    return tiling.border_energy_ratio(change, tiling.plan_tiles(*change.shape[-2:], tile, 0, 8))


# ---------------------------------------------------------------------------------------------------- batch
def section_batch(E, steps):
    enc = E.as_ensemble(common.tae("taef2"))
    kinds = ("flat", "lineart", "anime", "painting", "photo_coffee", "flat_scene", "photo_rocket", "comic")
    import numpy as np
    x = torch.cat([torch.from_numpy(np.ascontiguousarray(devset.image(k, 512))).permute(2, 0, 1)[None]
                   for k in kinds])
    t = devset.targets_for(x, list(kinds))
    s = settings(E, steps=steps, precision="auto")
    pad = E.padder(512, 512, enc.multiple)
    from importlib import import_module
    est = import_module("ComfyUI-Cloak.engine.estimate")

    def one_run(xs, ts):
        est._PROBES.clear()  # a queued run of its own measures its encoder again (the cache is per process,
        with torch.enable_grad():  # but a fresh run also rebuilds the target and re-checks the cost)
            probed = est.probe(enc)
        est.estimate_cost(probed, 512, 512, xs.shape[0], s.steps, enc.multiple)
        target = E.make_style_target(enc, ts, "per_image", pad)
        with torch.enable_grad():
            return E.cloak_images(xs, enc, lambda i, p: E.objective_for_target(enc, target, i, E.latent_sizes(enc, p)),
                                  s)
    t0 = time.perf_counter()
    one_run(x, t)
    together = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(x.shape[0]):
        one_run(x[i:i + 1], t[i:i + 1])
    apart = time.perf_counter() - t0
    print(f"\n== batch: 8 images at 512², {steps} steps, precision auto ==\n"
          f"one run of 8: {together:.1f} s ({8 / together * 60:.2f} images/min); 8 runs of 1: {apart:.1f} s "
          f"({8 / apart * 60:.2f} images/min); throughput ratio {apart / together:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="scale,protection,batch,estimate")
    ap.add_argument("--models", default="taef2,sd-arch")
    ap.add_argument("--scale-sizes", default=",".join(map(str, SCALE_SIZES)))
    ap.add_argument("--scale-steps", type=int, default=0, help="steps run per size in the scale section (0: 4 up to "
                    "1024², 3 at 2048², 2 at 4096²); 7 holds two refreshes of the decoded term in its 6 timed intervals, "
                    "as a preset's steps do (one pass in 3)")
    ap.add_argument("--scale-auto-only", action="store_true", help="the scale section's automatic row alone (no whole-image "
                    "or fp32 comparison rows: half the time at 2048²)")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--variants", default="full,tiled,auto,fast")
    ap.add_argument("--kinds", default=",".join(kinds_for(0)))
    ap.add_argument("--steps", type=int, default=100, help="steps per cloak in the protection section")
    ap.add_argument("--batch-steps", type=int, default=20)
    ap.add_argument("--estimate-sizes", default="512,1024,2048")
    ap.add_argument("--estimate-steps", default="12,8,6", help="steps run per size in the estimate section")
    ap.add_argument("--archs", default="sd15,sdxl,sd3,flux1,flux2", help="full VAE architectures (vae section)")
    ap.add_argument("--vae-sizes", default="512,1024")
    ap.add_argument("--vae-steps", type=int, default=4, help="steps run per size in the vae sections")
    args = ap.parse_args()
    torch.manual_seed(0)
    E = common.load_host().engine
    from importlib import import_module
    E.precision = import_module("ComfyUI-Cloak.engine.precision")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 native: "
          f"{E.precision.cpu_has_fast_bf16()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    sections = args.sections.split(",")
    if "scale" in sections:
        section_scale(E, args.models.split(","), [int(v) for v in args.scale_sizes.split(",")],
                      (lambda size: args.scale_steps) if args.scale_steps else
                      (lambda size: 4 if size <= 1024 else (3 if size == 2048 else 2)), args.scale_auto_only)
    if "protection" in sections:
        section_protection(E, [int(v) for v in args.sizes.split(",")], args.variants.split(","),
                           args.kinds.split(","), args.steps)
    if "estimate" in sections:
        sizes = [int(v) for v in args.estimate_sizes.split(",")]
        steps = dict(zip(sizes, (int(v) for v in args.estimate_steps.split(","))))
        section_estimate(E, sizes, lambda size: steps.get(size, 6))
    if "batch" in sections:
        section_batch(E, args.batch_steps)
    if "vae" in sections:
        section_vae(E, args.archs.split(","), [int(v) for v in args.vae_sizes.split(",")], args.vae_steps)
    if "vae_seams" in sections:
        section_vae_seams(E, args.vae_steps)


if __name__ == "__main__":
    main()
