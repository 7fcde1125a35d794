"""NightshadePoison: speed of the latent and noise objectives, and the poison's quality and target gain per
intensity, side by side with the reference loop; then the issue's "Done when" check on 16 images.

Prints, at 256² on the trained TAESD:
  1. seconds per step and per image: latent objective (robustness off/on); noise objective with a small
     SD1.x-type UNet and with the full-size SD1.x UNet architecture (random weights: timing only), both
     through the node's own ComfyUI path (CFGGuider, weight wrappers);
  2. per intensity preset (low/default/high): PSNR, SSIM, latent target gain toward the paired anchor, how
     many images end nearer the anchor's latent than their own original's, seconds — for NightshadePoison
     (latent objective, adaptive budget, Adam, EOT) and for the reference loop (PhotoGuard-style L∞ sign PGD
     toward the same anchor latent, same steps, no EOT) with its L∞ bound tuned to match our PSNR (±0.25 dB);
  3. the check: intensity "default" on 16 real photos (crops of 16 different scikit-image photos), anchors =
     3 crops of a real cat photo (concept B): PSNR ≥ 33 dB, SSIM ≥ 0.95 and d(E(x'), E(anchor)) <
     d(E(x'), E(x)) for every image.

    .host/venv/bin/python bench/bench_nightshade.py                 # everything (CPU, 2 cores: hours)
    .host/venv/bin/python bench/bench_nightshade.py --quick         # 2 images, tiny UNet only
    .host/venv/bin/python bench/bench_nightshade.py --only check    # just the 16-image check
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from importlib import import_module

import torch

import common

# 16 different real photos (scikit-image, bundled); grey ones are used as RGB. Held out of the TAESD's
# training: coffee and rocket. The cat photo (chelsea) is left out: it is concept B.
SET_PHOTOS = ["astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
              "moon", "brick", "grass", "gravel", "coins", "clock", "cell", "text", "page"]
ANCHOR_CROPS = [(0.0, 1.0), (0.5, 1.0), (0.55, 0.6)]  # (horizontal offset, side fraction) of the cat photo


def _square(img, size, offset=0.5, frac=1.0):
    import numpy as np
    import skimage.transform
    img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    side = int(min(h, w) * frac)
    top, left = (h - side) // 2, int((w - side) * offset)
    crop = skimage.transform.resize(img[top:top + side, left:left + side], (size, size), anti_aliasing=True,
                                    preserve_range=True)
    return torch.from_numpy(np.round(crop).astype(np.uint8)).permute(2, 0, 1).float() / 255


def photo_set(size: int, count: int) -> torch.Tensor:
    import skimage.data
    return torch.stack([_square(getattr(skimage.data, n)(), size) for n in SET_PHOTOS[:count]])


def cat_anchors(size: int) -> torch.Tensor:
    import skimage.data
    cat = skimage.data.chelsea()
    return torch.stack([_square(cat, size, off, frac) for off, frac in ANCHOR_CROPS])


def tiny_sd15(seed=0, channels=32, context=32):
    """An SD1.x-type model (comfy.model_base.BaseModel, EPS): tiny UNet, explicit weight init."""
    return sd15(seed, {"model_channels": channels, "num_res_blocks": [1, 1], "transformer_depth": [1, 1],
                       "channel_mult": [1, 2], "transformer_depth_output": [1, 1, 1, 1], "context_dim": context,
                       "num_heads": 2})


def full_sd15(seed=0):
    """The full-size SD1.5 UNet architecture (860 M parameters) with random weights: timing only."""
    return sd15(seed, {"model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
                       "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
                       "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "context_dim": 768,
                       "num_heads": 8})


def sd15(seed, shape):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    unet = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "transformer_depth_middle": 1,
            "use_linear_in_transformer": False, "use_temporal_resblock": False, "use_temporal_attention": False,
            "dtype": torch.float32, **{k: v for k, v in shape.items() if k != "num_heads"}}
    config = comfy.supported_models.SD15(unet)
    config.unet_config["num_heads"] = shape["num_heads"]
    with torch.inference_mode():  # as Load Checkpoint makes it inside ComfyUI
        model = config.get_model({})
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=torch.device("cpu"))
        positive = [[torch.randn(1, 77, shape["context_dim"], generator=g), {}]]
    return patcher, positive


class Ctx:
    def __init__(self, encoder="taesd"):
        self.pack = common.load_host()
        self.E = self.pack.engine
        self.NS = import_module("ComfyUI-Cloak.engine.nightshade")
        self.nodes = import_module("ComfyUI-Cloak.nodes.nightshade_nodes")
        adapters = import_module("ComfyUI-Cloak.nodes.comfy_adapters")
        if encoder == "taesd":
            self.encoder = self.E.as_ensemble(adapters.vae_encoder(common.taesd_vae()))
            self.label = "trained TAESD (toy)"
        else:
            self.encoder = self.E.as_ensemble(common.tae(encoder))
            self.label = f"{encoder.upper()} (real, pretrained)"
        self.encoder.prepare()


def run(ctx, x, anchors, settings, objective="latent", predictor=None, seed=0):
    """Poison ``x``; per-run means, counts and timing. ``sec_step`` is the median time between optimisation
    steps (set-up, calibration and the final metrics left out); ``sec_img`` the whole run per image."""
    stamps = []
    with torch.inference_mode(False), torch.enable_grad():  # also inside with_model's inference mode
        t0 = time.perf_counter()
        res = ctx.NS.poison_images(x, ctx.encoder, anchors, settings, objective, predictor, seed=seed,
                                   hooks=ctx.E.Hooks(on_step=lambda *a: stamps.append(time.perf_counter())))
        seconds = time.perf_counter() - t0
    reps, checks = res.cloak.reports, res.checks
    n = len(reps)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]) if b > a)
    return {"psnr": sum(r["psnr"] for r in reps) / n, "ssim": sum(r["ssim"] for r in reps) / n,
            "min_psnr": min(r["psnr"] for r in reps), "min_ssim": min(r["ssim"] for r in reps),
            "gain": sum(c["latent_gain"] for c in checks) / n,
            "toward": sum(c["to_anchor_after"] < c["to_anchor_before"] for c in checks),
            "nearer": sum(c["nearer_anchor"] for c in checks), "n": n,
            "sec_img": seconds / n, "sec_step": gaps[len(gaps) // 2] if gaps else seconds / n}, res


def with_model(ctx, patcher, positive, latent_size, work):
    with torch.inference_mode():  # as ComfyUI executes nodes
        return ctx.nodes.with_diffusion_model(patcher, positive, latent_size, work)


def bench_speed(ctx, size, noise_steps, full_steps):
    print(f"\n== 1. speed at {size}² (1 image; trained TAESD encoder) ==")
    print(f"{'objective':52} {'steps':>6} {'s/step':>8} {'s/image at 100 steps':>21}")
    x, anchors = photo_set(size, 1), cat_anchors(size)[:1]
    warm = ctx.E.settings_for("default", "default", "off", kind="nightshade")
    run(ctx, x, anchors, dataclasses.replace(warm, steps=2))  # warm-up
    for rob in ("off", "on"):
        s = ctx.E.settings_for("default", "default", rob, kind="nightshade")
        s = dataclasses.replace(s, steps=noise_steps)
        r, _ = run(ctx, x, anchors, s)
        print(f"{'latent, robustness ' + rob:52} {noise_steps:6d} {r['sec_step']:8.3f} {r['sec_step'] * 100:21.1f}")
    models = [("noise, tiny SD1.x UNet (32 ch)", tiny_sd15, noise_steps)]
    if full_steps:
        models.append(("noise, full SD1.5 UNet arch (random weights)", full_sd15, full_steps))
    latent_size = (size // 8, size // 8)
    for label, make, steps in models:
        patcher, positive = make()
        for rob in ("off", "on"):
            s = dataclasses.replace(ctx.E.settings_for("default", "default", rob, kind="nightshade"), steps=steps)
            r, _ = with_model(ctx, patcher, positive, latent_size,
                              lambda p, s=s: run(ctx, x, anchors, s, "noise", p))
            print(f"{label + ', robustness ' + rob:52} {steps:6d} {r['sec_step']:8.3f} {r['sec_step'] * 100:21.1f}")
        del patcher


def matched_reference(ctx, x, anchors, psnr_target, steps, seed=0):
    """Reference loop with its L∞ bound tuned until its PSNR is nearest ``psnr_target`` (8-bit grid, see common.match_psnr)."""
    eps, (ref, _) = common.match_psnr(
        lambda e: run(ctx, x, anchors, ctx.E.reference_settings(e, steps), seed=seed), psnr_target)
    ref["eps_255"] = eps * 255
    return ref


COLS = ("psnr", "ssim", "gain", "toward", "nearer", "sec_img", "sec_step")


def bench_intensity(ctx, size, count, quality, robustness):
    x, anchors = photo_set(size, count), cat_anchors(size)
    print(f"\n== 2. per intensity at {size}², {count} images, render quality {quality}, robustness {robustness}; "
          f"latent objective vs the reference loop (L∞ sign PGD, PSNR-matched) ==")
    print(f"{'preset':8} {'method':10} " + " ".join(f"{c:>9}" for c in COLS) + f" {'eps/255':>8}")
    for preset in ("low", "default", "high"):
        s = ctx.E.settings_for(preset, quality, robustness, kind="nightshade")
        ours, _ = run(ctx, x, anchors, s)
        ref = matched_reference(ctx, x, anchors, ours["psnr"], s.steps)
        for label, r, eps in (("nightshade", ours, s.eps * 255), ("reference", ref, ref["eps_255"])):
            cells = [f"{r[c]:9.4f}" if c not in ("toward", "nearer") else f"{r[c]:>6d}/{r['n']:<2d}" for c in COLS]
            print(f"{preset:8} {label:10} " + " ".join(cells) + f" {eps:8.2f}")


def bench_check(ctx, size, count, quality, robustness):
    x, anchors = photo_set(size, count), cat_anchors(size)
    s = ctx.E.settings_for("default", quality, robustness, kind="nightshade")
    print(f"\n== 3. check: intensity default, render quality {quality}, robustness {robustness}, {count} photos at "
          f"{size}², {anchors.shape[0]} cat anchors ==")
    r, res = run(ctx, x, anchors, s)
    print(f"{'image':22} {'anchor':>6} {'PSNR':>7} {'SSIM':>7} {'d(x0,a)':>8} {'d(x1,a)':>8} {'d(x1,x0)':>8} "
          f"{'gain':>6} toward nearer")
    for name, rep, c in zip(SET_PHOTOS, res.cloak.reports, res.checks):
        toward = c["to_anchor_after"] < c["to_anchor_before"]
        print(f"{name:22} {c['anchor']:6d} {rep['psnr']:7.2f} {rep['ssim']:7.4f} {c['to_anchor_before']:8.2f} "
              f"{c['to_anchor_after']:8.2f} {c['to_original_after']:8.2f} {c['latent_gain']:6.3f} "
              f"{'yes' if toward else 'NO':>6} {'yes' if c['nearer_anchor'] else 'NO':>6}")
    n = r["n"]
    print(f"PSNR >= 33 dB for every image: {'PASS' if r['min_psnr'] >= 33 else 'FAIL'} (min {r['min_psnr']:.2f}, "
          f"mean {r['psnr']:.2f})")
    print(f"SSIM >= 0.95 for every image: {'PASS' if r['min_ssim'] >= 0.95 else 'FAIL'} (min {r['min_ssim']:.4f}, "
          f"mean {r['ssim']:.4f})")
    print(f"poisoned latent nearer the anchor's than the original latent was, d(x1,a) < d(x0,a): "
          f"{r['toward']}/{n} {'PASS' if r['toward'] == n else 'FAIL'}")
    print(f"poisoned latent nearer the anchor's than to the original's, d(x1,a) < d(x1,x0): "
          f"{r['nearer']}/{n} {'PASS' if r['nearer'] == n else 'FAIL'}")
    print(f"mean latent gain {r['gain']:.3f}; {r['sec_img']:.1f} s/image, {r['sec_step']:.3f} s/step")


def bench_presets(ctx, size, count, quality, robustness, psnr_levels, presets=("low", "default", "high")):
    """Per preset, and then at lower PSNR ceilings (intensity high's ε, SSIM floor off), how many of ``count``
    poisoned latents end nearer the anchor's latent than their own original's; the first PSNR with all of them."""
    x, anchors = photo_set(size, count), cat_anchors(size)
    print(f"\n== 4. nearer the anchor, per preset and PSNR ceiling: {ctx.label}, {count} photos at {size}², "
          f"{anchors.shape[0]} cat anchors, render quality {quality}, robustness {robustness} ==")
    print(f"{'setting':26} {'PSNR':>7} {'SSIM':>7} {'gain':>7} {'toward':>7} {'nearer':>7} {'s/img':>7}")
    all_at = None
    rows = [(p, ctx.E.settings_for(p, quality, robustness, kind="nightshade")) for p in presets]
    high = ctx.E.settings_for("high", quality, robustness, kind="nightshade")
    rows += [(f"PSNR >= {p:g} dB", dataclasses.replace(high, min_psnr=float(p), min_ssim=None, eps=48 / 255))
             for p in psnr_levels]
    for label, s in rows:
        r, _ = run(ctx, x, anchors, s)
        print(f"{label:26} {r['psnr']:7.2f} {r['ssim']:7.4f} {r['gain']:7.3f} {r['toward']:>4d}/{r['n']:<2d} "
              f"{r['nearer']:>4d}/{r['n']:<2d} {r['sec_img']:7.1f}", flush=True)
        if all_at is None and r["nearer"] == r["n"]:
            all_at = r["psnr"]
    print("all nearer the anchor first at mean PSNR " + (f"{all_at:.2f} dB" if all_at else "— (not reached)"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 images, 10-step speed runs, no full-size UNet")
    ap.add_argument("--only", choices=("speed", "intensity", "check", "presets"), help="run one section")
    ap.add_argument("--encoder", default="taesd", choices=("taesd", "taef2"),
                    help="taef2: the real pretrained encoder from the shared models folder")
    ap.add_argument("--presets", default="low,default,high", help="intensity presets of section 4")
    ap.add_argument("--psnr-levels", default="30,28,26,24", help="PSNR ceilings tried after the presets (section 4)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sweep-images", type=int, default=4, help="images per intensity preset (section 2)")
    ap.add_argument("--check-images", type=int, default=16, help="images of the check (section 3)")
    ap.add_argument("--quality", default="default")
    ap.add_argument("--robustness", default="on")
    ap.add_argument("--speed-steps", type=int, default=10, help="steps per speed run (latent, tiny UNet)")
    ap.add_argument("--full-unet-steps", type=int, default=3, help="steps with the full-size UNet (0: skip)")
    args = ap.parse_args()
    ctx = Ctx(args.encoder)
    torch.manual_seed(0)
    if args.quick:
        args.sweep_images, args.check_images, args.full_unet_steps = 2, 2, 0
    if args.only in (None, "speed"):
        bench_speed(ctx, args.size, args.speed_steps, args.full_unet_steps)
    if args.only in (None, "intensity"):
        bench_intensity(ctx, args.size, args.sweep_images, args.quality, args.robustness)
    if args.only in (None, "check"):
        bench_check(ctx, args.size, args.check_images, args.quality, args.robustness)
    if args.only in (None, "presets"):
        bench_presets(ctx, args.size, args.check_images, args.quality, args.robustness,
                      [float(p) for p in args.psnr_levels.split(",") if p], tuple(args.presets.split(",")))


if __name__ == "__main__":
    main()
