"""Survival table: how much of the cloak's target gain each attack leaves, GlazePerturb (robustness off / on)
vs the reference loop, side by side, on the trained TAESD at 256².

Images: real photos (scikit-image, held out of the TAESD's training first); target: each photo's stylised
copy (bench/common.stylise, the stand-in for Glaze's style transfer), per image. GlazePerturb runs
``settings_for(intensity, render_quality, robustness)``; the reference loop is PhotoGuard-style L∞ sign PGD
(``engine.cloak.reference_settings``, same steps, no EOT) with its ε set so its PSNR matches GlazePerturb
(robustness on) at the nearest 8-bit level (common.match_psnr). Every attack of engine/attacks.py runs (the VAE round trip and IMPRESS with the
same TAESD); DiffPure / noisy upscaling need a trained diffusion model, which this offline machine lacks.

    .host/venv/bin/python bench/bench_robustness.py              # 3 images, default preset (CPU: ~15 min)
    .host/venv/bin/python bench/bench_robustness.py --images 1 --steps 30   # quick look
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from importlib import import_module

import torch

import common

PURIFICATIONS = ("vae", "impress", "diffpure", "noisy_upscale")


def cloak(E, ensemble, x, target, settings, seed):
    def make_objective(i, padded):
        return E.objective_for_target(ensemble, target, i, E.latent_sizes(ensemble, padded))

    with torch.enable_grad():
        t0 = time.perf_counter()
        res = E.cloak_images(x, ensemble, make_objective, settings, seed=seed)
    mean = lambda k: sum(r[k] for r in res.reports) / len(res.reports)  # noqa: E731
    info = {"psnr": mean("psnr"), "ssim": mean("ssim"), "gain": mean("target_gain"),
            "sec_img": (time.perf_counter() - t0) / x.shape[0], "eps_255": settings.eps * 255}
    return res.images, info, make_objective


def matched_reference(E, ensemble, x, target, psnr_goal, steps, seed):
    """Reference loop with its L∞ bound tuned until its PSNR is nearest ``psnr_goal`` (8-bit grid, see common.match_psnr)."""
    def run_at(eps):
        images, info, make = cloak(E, ensemble, x, target, E.reference_settings(eps, steps), seed)
        return info, (images, info, make)

    return common.match_psnr(run_at, psnr_goal)[1][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--intensity", default="default")
    ap.add_argument("--quality", default="default", help="render quality preset (steps)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--attacks", default=None, help="attack list (default: engine.attacks.DEFAULT_ATTACKS)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pack = common.load_host()
    E = pack.engine
    A = import_module("ComfyUI-Cloak.engine.attacks")
    adapters = import_module("ComfyUI-Cloak.nodes.comfy_adapters")
    RN = import_module("ComfyUI-Cloak.nodes.robustness_nodes")
    vae = common.taesd_vae()
    ensemble = E.as_ensemble(adapters.vae_encoder(vae))
    ensemble.prepare()
    autoencode, multiple = RN.vae_autoencoder(vae)
    ctx = A.AttackContext(autoencode=autoencode, multiple=multiple)
    attacks = A.parse_attacks(args.attacks or A.DEFAULT_ATTACKS)

    x = common.photos(args.size, args.images)
    styles = common.stylise(x)
    device = ensemble.members[0].device
    pad = E.padder(x.shape[-2], x.shape[-1], ensemble.multiple)
    target = E.make_style_target(ensemble, styles.to(device), "per_image", pad)
    with torch.no_grad():
        recon_psnr = float(E.psnr(autoencode(x.to(device)).cpu(), x).mean())
    print(f"trained TAESD ({ensemble.name}) at {args.size}², {args.images} photos, target = stylised copy per "
          f"image; intensity {args.intensity}, render quality {args.quality}"
          f"{f', {args.steps} steps' if args.steps else ''}; TAESD round-trip PSNR of the photos "
          f"{recon_psnr:.2f} dB")

    methods = {}
    for label, robustness in (("glaze off", "off"), ("glaze on", "on")):
        settings = E.settings_for(args.intensity, args.quality, robustness)
        if args.steps:
            settings = dataclasses.replace(settings, steps=args.steps)
        methods[label] = cloak(E, ensemble, x, target, settings, args.seed)
    steps = settings.steps
    methods["reference"] = matched_reference(E, ensemble, x, target, methods["glaze on"][1]["psnr"], steps,
                                             args.seed)

    print(f"\n{'method':10} {'PSNR':>7} {'SSIM':>7} {'gain':>7} {'eps/255':>8} {'s/img':>7}")
    for label, (_, info, _) in methods.items():
        print(f"{label:10} {info['psnr']:7.2f} {info['ssim']:7.4f} {info['gain']:7.3f} {info['eps_255']:8.2f} "
              f"{info['sec_img']:7.1f}")

    reports = {}
    for label, (images, _, make) in methods.items():
        t0 = time.perf_counter()
        reports[label] = A.check_survival(x.to(device), images.to(device), make, attacks, ensemble.multiple, ctx,
                                          seed=args.seed, title=label)
        print(f"[{label}: attacks took {time.perf_counter() - t0:.0f} s]")

    names = list(methods)
    print("\nkept share of the unattacked target gain (attacked gain / unattacked gain), mean over images; "
          "PSNR of the attacked cloaked image vs the original")
    print(f"{'attack':24} " + " ".join(f"{n + ' kept':>15}" for n in names) + f" {'on > ref':>9} "
          + " ".join(f"{n + ' PSNR':>15}" for n in names))
    failing = []
    for k, attack in enumerate(attacks):
        outs = [reports[n].outcomes[k] for n in names]
        if any(o.status != "ok" for o in outs):
            print(f"{attack.label:24} skipped: {outs[0].reason}")
            continue
        kept = [o.kept for o in outs]
        psnr = [sum(o.psnr) / len(o.psnr) for o in outs]
        better = kept[1] > kept[2]
        purification = attack.kind.key in PURIFICATIONS
        if not better and not purification and attack.kind.key != "none":
            failing.append(attack.label)
        mark = ("yes" if better else "NO") + ("*" if purification else "")
        print(f"{attack.label:24} " + " ".join(f"{100 * v:14.1f}%" for v in kept) + f" {mark:>9} "
              + " ".join(f"{p:15.2f}" for p in psnr))
    print("* purification: reported as it is, not part of the goal")
    print("goal (robustness on keeps more than the reference under every non-purification attack): "
          + ("met" if not failing else "NOT met for " + ", ".join(failing)))


if __name__ == "__main__":
    main()
