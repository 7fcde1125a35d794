"""The GPU path in one prepared run, for a lent GPU machine (the tool library's `device`): agreement with the CPU on
the same seed, then seconds per image at 512², 2048² and 4096² for render quality faster and default.

1. Agreement: one 256² development image cloaked at render quality faster, robustness on, on the CPU (fp32 passes)
   and on the GPU (automatic precision: bf16 autocast), the same seed (the EOT draws come from a CPU generator, so
   both runs draw the same transforms); both scored on the CPU's TAEF2 in fp32. Prints both gains and their ratio
   (the goal: within 2 %) and exits non-zero when they differ by more than 5 %.
2. Time: flat_scene (the 512² development image, upscaled) at each size, automatic tiles (2048 px on a GPU) and
   precision, seconds per image including the style target, calibration and the report; peak GPU memory.
3. Full VAEs (``--archs``, default sd15,flux1,flux2): the architectures of scripts/full_vaes.py (ComfyUI's own
   classes, random weights: time and memory only) through LoadVAEEncoder's adapter with their decoders, render
   quality default (decoded objective + style term, bf16 autocast, tiles of 2048), ``--vae-steps`` steps at
   ``--vae-sizes`` (1024,2048): seconds per step, fixed seconds, peak GPU memory, the up-front estimate of the
   100-step job against fixed + 100 x per step.

    .host/venv/bin/python bench/gpu_check.py                 # on the GPU machine, ~5-10 min
    .host/venv/bin/python bench/gpu_check.py --sizes 512 --archs sd15 --vae-sizes 1024   # a short run

Needs CUDA and ../shared/models/taef2 (encoder and decoder); exits saying why without them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import devset  # noqa: E402
import glaze_eval as G  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,2048,4096")
    ap.add_argument("--qualities", default="faster,default")
    ap.add_argument("--archs", default="sd15,flux1,flux2", help="full VAE architectures ('' to skip)")
    ap.add_argument("--vae-sizes", default="1024,2048")
    ap.add_argument("--vae-steps", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check runs on a GPU machine (see the tool library's device notes)")
    E = common.load_host().engine
    path = common.tae_path("taef2_encoder.pth")
    if path is None or common.tae_path("taef2_decoder.pth") is None:
        sys.exit(f"TAEF2 encoder and decoder not found in {common.shared_models_dir()}")
    cpu = E.as_ensemble(E.tae_encoder(path, "cpu"))
    gpu = E.as_ensemble(E.tae_encoder(path, "cuda"))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)

    x, t, kinds = devset.devset(256)
    x, t = x[1:2], t[1:2]
    s = dataclasses.replace(E.settings_for("default", "faster", "on"), precision="auto")
    start = time.perf_counter()
    on_cpu = G.cloak(E, cpu, x, t, dataclasses.replace(s, precision="fp32"))[0]
    cpu_s = time.perf_counter() - start
    start = time.perf_counter()
    on_gpu = G.cloak(E, gpu, x, t, s)[0].cpu()
    gpu_s = time.perf_counter() - start
    g_cpu = float(G.gains(E, cpu, x, on_cpu, t)["gain"].mean())
    g_gpu = float(G.gains(E, cpu, x, on_gpu, t)["gain"].mean())
    ratio = g_gpu / max(g_cpu, 1e-9)
    print(f"agreement (256² {kinds[1]}, faster, same seed, scored on the CPU in fp32): gain CPU fp32 {g_cpu:.4f} "
          f"({cpu_s:.1f} s), GPU auto {g_gpu:.4f} ({gpu_s:.1f} s), ratio {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.02 else 'OUTSIDE'} 2 %)", flush=True)

    for size in (int(v) for v in args.sizes.split(",")):
        xs, ts, _ = devset.devset(size, ("flat_scene",))
        for quality in args.qualities.split(","):
            q = dataclasses.replace(E.settings_for("default", quality, "on"), precision="auto")
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            start = time.perf_counter()
            img, rep = G.cloak(E, gpu, xs, ts, q)
            torch.cuda.synchronize()
            sec = time.perf_counter() - start
            print(f"{size}² {quality:8} {sec:8.1f} s  PSNR {rep['psnr']:.2f}  gain {rep['target_gain']:.3f}  tiles "
                  f"{rep['tiles']}  peak GPU {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB", flush=True)
    for arch in filter(None, args.archs.split(",")):
        full_vae_rows(E, arch, [int(v) for v in args.vae_sizes.split(",")], args.vae_steps)
    sys.exit(0 if abs(ratio - 1) <= 0.05 else 1)


def full_vae_rows(E, arch: str, sizes, steps: int) -> None:
    """Seconds per step and peak GPU memory of GlazePerturb's default through a full VAE architecture (random
    weights), and the up-front estimate against the measurement."""
    from importlib import import_module
    sys.path.insert(0, os.path.join(common.ROOT, "scripts"))
    import full_vaes
    adapters = import_module("ComfyUI-Cloak.nodes.comfy_adapters")
    enc = E.as_ensemble(adapters.vae_encoder(full_vaes.build_vae(arch), "auto", keep_decoder=True))
    for size in sizes:
        xs, ts, _ = devset.devset(size, ("flat_scene",))
        s = dataclasses.replace(E.settings_for("default", "default", "on"), precision="auto")
        torch.cuda.reset_peak_memory_stats()
        r = G.estimate_against_run(E, enc, xs, ts, s, steps, torch.cuda.mem_get_info()[0], torch.cuda.synchronize)
        print(f"{arch} {size}² default: {r['per_step']:.2f} s/step, fixed {r['fixed']:.1f} s, 100 steps "
              f"~{r['measured']:.0f} s, estimated {r['estimate'].seconds:.0f} s "
              f"({r['estimate'].seconds / r['measured']:.2f}x), tiles {r['report']['tiles']}, "
              f"peak GPU {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB", flush=True)
    del enc
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
