"""The toy's tables (the TAESD trained in this repository): GlazePerturb vs the reference loop per preset.

Run by ``bench/toy_glaze.py --sections toy`` after the TAEF2 tables; kept runnable on its own.

Prints, for the trained TAESD (256², 512²) and the full-size SD1.x VAE architecture with random weights
(128², 256²; timing and memory only — its gains mean nothing): seconds per image and per step, peak
memory, PSNR, SSIM, target gain before and after JPEG q75 (real codec) and a 0.5× down-up resize; and the
same for the reference loop (PhotoGuard-style L∞ sign PGD to the target latent, same steps, no EOT) whose
L∞ bound is set per preset so its PSNR is the 8-bit level nearest our PSNR, side by side with ratios. When
that level is more than 0.5 dB away, ours is run again with its PSNR ceiling moved onto the reference's
(row glaze@ref) and the ratios and step count compare that matched pair.

    .host/venv/bin/python bench/toy_glaze.py            # everything (CPU: ~40 min)
    .host/venv/bin/python bench/toy_glaze.py --quick    # TAESD 256² only, 2 images
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

import common


def pil_codec(x, fmt, quality):
    """The real-codec re-save of RobustnessCheck (engine/attacks.py), so both benches attack alike."""
    from importlib import import_module
    return import_module("ComfyUI-Cloak.engine.attacks").pil_codec(x, fmt, quality)


def run(E, ensemble, x, styles, settings, seed, track_every=5):
    """Cloak ``x`` with ``settings``; returns per-image metrics and each image's gain trajectory."""
    pad = E.padder(x.shape[-2], x.shape[-1], ensemble.multiple)
    device = ensemble.members[0].device
    target = E.make_style_target(ensemble, styles.to(device), "per_image", pad)
    current = {}

    def make_objective(i, padded):
        current["obj"] = E.objective_for_target(ensemble, target, i, E.latent_sizes(ensemble, padded))
        current["x"], current["traj"] = x[i:i + 1].to(device), []
        trajs.append(current["traj"])
        return current["obj"]

    def on_step(step, steps, loss, delta):
        if step % track_every == 0 or step == steps:
            with torch.no_grad():
                obj, xi = current["obj"], current["x"]
                d0, d = obj.distances(pad(xi)), obj.distances(pad(xi + delta))
                current["traj"].append((step, float(E.target_gain(d0, d)[0])))

    trajs: list = []
    with common.PeakMemory(device) as mem, torch.enable_grad():
        t0 = time.perf_counter()
        res = E.cloak_images(x, ensemble, make_objective, settings, seed=seed, hooks=E.Hooks(on_step=on_step))
        seconds = time.perf_counter() - t0
    out = {k: sum(r[k] for r in res.reports) / len(res.reports) for k in ("psnr", "ssim", "target_gain")}
    out["gain_jpeg75"] = attacked_gain(E, ensemble, x, res.images, target, lambda y: pil_codec(y, "JPEG", 75))
    out["gain_resize05"] = attacked_gain(E, ensemble, x, res.images, target, lambda y: E.transforms.resize_down_up(y, 0.5))
    steps = sum(r["steps"] for r in res.reports)
    # seconds include the gain-tracking forward every ``track_every`` steps (same for both methods)
    out.update(sec_img=seconds / x.shape[0], sec_step=seconds / steps, peak_mib=mem.peak_mib)
    return out, trajs


def attacked_gain(E, ensemble, x, x_adv, target, attack):
    pad = E.padder(x.shape[-2], x.shape[-1], ensemble.multiple)
    device = ensemble.members[0].device
    gains = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi, ai = x[i:i + 1].to(device), attack(x_adv[i:i + 1].to(device))
            obj = E.objective_for_target(ensemble, target, i, E.latent_sizes(ensemble, pad(xi)))
            gains.append(float(E.target_gain(obj.distances(pad(xi)), obj.distances(pad(ai)))[0]))
    return sum(gains) / len(gains)


def matched_reference(E, ensemble, x, styles, psnr_target, steps, seed):
    """Reference loop with its L∞ bound tuned until its PSNR is nearest ``psnr_target`` (8-bit grid, see common.match_psnr)."""
    eps, (ref, traj) = common.match_psnr(
        lambda e: run(E, ensemble, x, styles, E.reference_settings(e, steps), seed), psnr_target)
    ref["eps_255"] = eps * 255
    return ref, traj


def steps_to_reach(trajs, goal):
    """Mean over images of the first tracked step whose gain reaches ``goal`` (inf if never)."""
    firsts = []
    for t in trajs:
        firsts.append(next((s for s, g in t if g >= goal), math.inf))
    return sum(firsts) / len(firsts)


COLS = ("psnr", "ssim", "target_gain", "gain_jpeg75", "gain_resize05", "sec_img", "sec_step", "peak_mib")


def bench_model(E, name, ensemble, size, count, presets, robustness, quality, seed, quality_steps=None):
    x = common.photos(size, count)
    styles = common.stylise(x)
    print(f"\n== {name} at {size}², {count} images, robustness {robustness}, render quality {quality} ==")
    print(f"{'preset':8} {'method':10} " + " ".join(f"{c:>13}" for c in COLS) + f" {'eps/255':>8}")
    summary = []
    for preset in presets:
        settings = E.settings_for(preset, quality, robustness)
        if quality_steps:
            settings = dataclasses.replace(settings, steps=quality_steps)
        ours, our_traj = run(E, ensemble, x, styles, settings, seed)
        ref, ref_traj = matched_reference(E, ensemble, x, styles, ours["psnr"], settings.steps, seed)
        rows = [("glaze", ours), ("reference", ref)]
        if abs(ref["psnr"] - ours["psnr"]) > 0.5 and settings.min_psnr is not None:
            # the reference's PSNR moves in whole 8-bit levels (about 2 dB apart near 35 dB), so when it cannot
            # land within 0.5 dB of ours, ours is re-run with its PSNR ceiling moved by the difference: same
            # preset otherwise (SSIM floor included), a real second run, printed as glaze@ref
            moved = dataclasses.replace(settings, min_psnr=settings.min_psnr + ref["psnr"] - ours["psnr"])
            ours, our_traj = run(E, ensemble, x, styles, moved, seed)
            rows.insert(1, ("glaze@ref", ours))
        for label, r in rows:
            extra = f" {r['eps_255']:8.2f}" if "eps_255" in r else f" {settings.eps * 255:8.2f}"
            print(f"{preset:8} {label:10} " + " ".join(f"{r[c]:13.4f}" for c in COLS) + extra)
        ratio = {c: ours[c] / ref[c] if ref[c] else float("nan") for c in COLS}
        print(f"{preset:8} {'ratio':10} " + " ".join(f"{ratio[c]:13.3f}" for c in COLS)
              + ("  (glaze@ref / reference)" if len(rows) == 3 else ""))
        reach = steps_to_reach(our_traj, ref["target_gain"])
        print(f"{preset:8} glaze reaches the reference's final gain {ref['target_gain']:.3f} at step "
              f"{reach:.0f} of {settings.steps} ({reach / settings.steps:.2f} of the steps)")
        summary.append((preset, ours, ref, reach / settings.steps))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="TAESD 256² only, 2 images")
    ap.add_argument("--images", type=int, default=4, help="images per TAESD 256² run")
    ap.add_argument("--robustness", default="on")
    ap.add_argument("--quality", default="default")
    ap.add_argument("--sd-steps", type=int, default=4, help="steps per SD-VAE run (CPU timing only)")
    ap.add_argument("--steps-512", type=int, default=None, help="steps per TAESD 512² run (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", default="256,512,sd", help="which parts to run (comma-separated: 256, 512, sd)")
    args = ap.parse_args()
    sections = {"256"} if args.quick else set(args.sections.split(","))
    pack = common.load_host()
    E = pack.engine
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from importlib import import_module
    adapters = import_module("ComfyUI-Cloak.nodes.comfy_adapters")
    presets = ("low", "default", "high")
    taesd = E.as_ensemble(adapters.vae_encoder(common.taesd_vae()))
    taesd.prepare()
    if "256" in sections:
        bench_model(E, "trained TAESD", taesd, 256, 2 if args.quick else args.images, presets,
                    args.robustness, args.quality, args.seed)
    if "512" in sections:
        bench_model(E, "trained TAESD", taesd, 512, 1, presets, args.robustness, args.quality, args.seed,
                    quality_steps=args.steps_512)
    if "sd" not in sections:
        return
    sd = E.as_ensemble(adapters.vae_encoder(common.random_sd_vae()))
    sd.prepare()
    for size in (128, 256):
        bench_model(E, f"SD1.x VAE arch, random weights, {args.sd_steps} steps (timing only)", sd, size, 1,
                    presets, args.robustness, args.quality, args.seed, quality_steps=args.sd_steps)


if __name__ == "__main__":
    main()
