"""Where a default cloak's step goes: each part of GlazePerturb's default objective, forward and backward, alone.

TAEF2 (real weights, with its decoder) at ``--size``: its encoder (every step), its decoder and the style term's
layers with their Gram matrices on the decoded picture (a refresh of the decoded term and every crop draw:
about 4 steps in 10 of the default), and the full-resolution HaarPSI of the visibility term (every step); each
in float32 and, where this CPU computes bf16 natively, under bf16 autocast as the optimisation runs it. Best of
``--repeats``. Run alone (2 shared cores), or say what ran beside it.

    OMP_NUM_THREADS=1 .host/venv/bin/python bench/bench_parts.py --size 512
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from importlib import import_module

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import bench_mimicry as BM  # noqa: E402


def best_of(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    E = common.load_host().engine
    O = import_module(E.__name__ + ".objectives")
    P = import_module(E.__name__ + ".precision")
    member = BM.taef2_with_decoder("bench_parts")
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z0 = member(x)
    style = O.style_stack(member.module)

    def encoder():
        member(x.clone().requires_grad_(True)).square().mean().backward()

    def decoder():
        member.decode(z0.clone().requires_grad_(True)).square().mean().backward()

    def style_term():
        sum(v.square().sum() for v in O.style_stats_of(style, x.clone().requires_grad_(True))).backward()

    def haarpsi():
        y = x.clone().requires_grad_(True)
        E.metrics.haarpsi(x, (y + 0.01).clamp(0, 1), subsample=False).sum().backward()

    kinds = [("fp32", contextlib.nullcontext)]
    if P.cpu_has_fast_bf16():
        kinds.append(("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 native: {P.cpu_has_fast_bf16()}, "
          f"TAEF2 at {args.size}², forward + backward, best of {args.repeats}")
    for name, fn in [("encoder", encoder), ("decoder", decoder), ("style layers + Gram", style_term),
                     ("HaarPSI (full resolution)", haarpsi)]:
        cells = []
        for kind, ctx in kinds:
            with ctx():
                fn()  # warm
                cells.append(f"{kind} {best_of(fn, args.repeats):6.3f} s")
        print(f"{name:28} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
