"""Does torch.compile make TAEF2's passes cheaper? Eager against compiled, side by side in one run.

One pass = what a cloak step costs: TAEF2's encoder (and, separately, its decoder) forward and backward with respect
to the input, bf16 autocast on CPU (float32 weights, as the engine runs them), channels-last. For each: the first
call (for the compiled module, the compile itself; the inductor cache under /tmp makes a second process faster),
then the best and mean of ``--reps`` timed calls, and the compiled gradient's relative difference to eager's.

    .host/venv/bin/python bench/bench_compile.py --sizes 256,512

Skips, with a reason, when ../shared/models/taef2 is absent. Run one bench at a time (2 shared cores).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def timed(fn, x0, reps):
    def once():
        x = x0.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x)
        out.float().square().mean().backward()
        return x.grad

    t = time.perf_counter()
    grad = once()
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return grad, first, min(times), sum(times) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    args = ap.parse_args()
    path = common.tae_path("taef2_encoder.pth")
    if path is None:
        print("SKIP: ../shared/models/taef2 is absent")
        return
    sys.path.insert(0, common.ROOT)
    from engine import tae

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mode {args.mode}")
    print("| part | size | eager first / best / mean s | compiled first / best / mean s | eager / compiled (mean) | grad rel diff |")
    print("|---|---|---|---|---|---|")
    for part in ("encoder", "decoder"):
        net, info = tae.load(path if part == "encoder" else tae.decoder_path_for(path), part)
        net = net.to(memory_format=torch.channels_last)
        compiled = torch.compile(net, mode=None if args.mode == "default" else args.mode, dynamic=False)
        for size in [int(s) for s in args.sizes.split(",")]:
            side = size if part == "encoder" else size // info.factor
            ch = 3 if part == "encoder" else info.channels
            x0 = torch.rand(1, ch, side, side)
            g0, f0, b0, m0 = timed(net, x0, args.reps)
            g1, f1, b1, m1 = timed(compiled, x0, args.reps)
            diff = ((g1 - g0).norm() / g0.norm()).item()
            print(f"| {part} | {size}² | {f0:.2f} / {b0:.3f} / {m0:.3f} | {f1:.2f} / {b1:.3f} / {m1:.3f} | "
                  f"{m0 / m1:.2f}× | {diff:.3f} |", flush=True)


if __name__ == "__main__":
    main()
