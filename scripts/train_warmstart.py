"""Train the amortised start (engine.warmstart.WarmStart) for one encoder, reproducibly, on CPU in minutes.

Training pictures: scikit-image's bundled photos that the development set does not use, and procedural flat,
line-art, cel and brush-stroke pictures made with other seeds than the development set's (bench/devset.py), as
random 128² crops with flips. Targets: the same crop in a random other style (posterised with a random palette
and edges, blurred and hatched at a random frequency, colour-rotated), as Glaze's target is the same picture
style-transferred, or (a quarter of the time) another crop. The net is trained to minimise the latent distance
left, ``|E(x + δ0) - E(t)|² / |E(x) - E(t)|²``, with ``δ0`` spent inside the default intensity's budget (adaptive
caps with the style cloak's floor, the PSNR ceiling), bf16 encoder passes where the CPU has them natively.
``--objective decoded`` trains against GlazePerturb's default objective instead (for an encoder with its decoder):
the latent term at 0.25, the decoded latent ``|D(E(x + δ0)) - D(t)|²`` at 0.5 and the decoded style (means and Gram
matrices of the encoder's own first layers on the decoded picture) at 0.25, each over its value at ``δ0 = 0``.
``--pool-seeds`` procedural seeds per generator (6 by default; 60 makes a pool of about 230 pictures), ``--minutes``
stops early. Written to ``models/warmstart/<encoder name>.safetensors`` (the weights, the net's config and the
training settings).

    .host/venv/bin/python scripts/train_warmstart.py --encoder taef2 --steps 600
    OMP_NUM_THREADS=1 .host/venv/bin/python scripts/train_warmstart.py --objective decoded --pool-seeds 60 --steps 3000 --minutes 45
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

from importlib import import_module

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import common  # noqa: E402
import devset  # noqa: E402

PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "camera", "brick", "grass",
          "gravel", "moon", "page", "clock", "coins", "text")


def photo(name: str, size: int) -> np.ndarray | None:
    import skimage.data
    import skimage.transform
    try:
        img = getattr(skimage.data, name)()
    except Exception:  # noqa: BLE001 - a photo that would need a download is skipped
        return None
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32)
    img = img / (255.0 if img.max() > 1.5 else 1.0)
    h, w = img.shape[:2]
    side = min(h, w)
    crop = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return skimage.transform.resize(crop, (size, size), anti_aliasing=True).astype(np.float32)


def pool(size: int = 256, seeds: int = 6) -> torch.Tensor:
    """The training pictures ``[N, 3, size, size]``: none of them is a development image (the development set and
    the mimicry bench's artists use seeds under 10 and from 100 on: these are seeds 10 to 10 + ``seeds``, capped
    under 100)."""
    pics = []
    rng = np.random.default_rng(0)
    photos = [p for p in (photo(n, size) for n in PHOTOS) if p is not None]
    for p in photos:
        tint = rng.uniform(0.6, 1.2, 3).astype(np.float32)  # grey photos get a colour cast
        pics.append(np.clip(p * tint, 0, 1) if np.allclose(p[..., 0], p[..., 1]) else p)
    for seed in range(10, min(100, 10 + seeds)):
        pics.append(devset._flat(size, seed))
        pics.append(devset._flat_scene(size, seed))
        pics.append(devset._lineart(size, seed))
    for i, p in enumerate(photos[:6]):
        pics.append(devset._painting(p, 20 + i))
        pics.append(devset._cel(p, levels=3 + i % 3).numpy())
    x = torch.from_numpy(np.stack([np.round(np.clip(p, 0, 1) * 255) / 255 for p in pics]).astype(np.float32))
    return x.permute(0, 3, 1, 2).contiguous()


def restyle(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The same pictures in a random other style (one per picture)."""
    import kornia
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        kind = int(torch.randint(3, (), generator=gen))
        u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
        if kind == 0:  # posterised, random palette, dark edges
            levels = int(torch.randint(2, 6, (), generator=gen))
            flat = torch.round(kornia.filters.gaussian_blur2d(xi, (7, 7), (u(0.5, 2), u(0.5, 2))) * levels) / levels
            gains = torch.tensor([u(0.7, 1.2), u(0.7, 1.2), u(0.7, 1.2)]).view(1, 3, 1, 1)
            edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(xi)).clamp(0, 0.25) * 4
            y = flat * gains * (1 - u(0.3, 0.9) * edges)
        elif kind == 1:  # blurred forms, hatching at a random frequency and angle
            h, w = xi.shape[-2:]
            yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
            a, f = u(0, math.pi), u(0.3, 1.2)
            hatch = 0.5 + 0.5 * torch.sin((xx * math.cos(a) + yy * math.sin(a)) * f)
            s = u(1.0, 3.0)
            soft = kornia.filters.gaussian_blur2d(xi, (9, 9), (s, s))
            y = soft * (u(0.6, 0.85) + u(0.2, 0.5) * hatch)
        else:  # colour rotation and contrast
            hsv = kornia.color.rgb_to_hsv(xi)
            hsv = torch.cat([(hsv[:, :1] + u(1.0, 5.0)) % (2 * math.pi), hsv[:, 1:2] * u(0.5, 1.5), hsv[:, 2:]], 1)
            y = (kornia.color.hsv_to_rgb(hsv) - 0.5) * u(0.7, 1.4) + 0.5
        out.append(y.clamp(0, 1))
    return torch.cat(out)


def crops(x: torch.Tensor, n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(x.shape[0], (n,), generator=gen)
    out = []
    for i in idx.tolist():
        y0, x0 = (int(torch.randint(x.shape[-1] - side + 1, (), generator=gen)) for _ in range(2))
        c = x[i:i + 1, :, y0:y0 + side, x0:x0 + side]
        if float(torch.rand((), generator=gen)) < 0.5:
            c = c.flip(-1)
        out.append(c)
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="taef2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "warmstart"))
    ap.add_argument("--objective", choices=("latent", "decoded"), default="latent")
    ap.add_argument("--pool-seeds", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: run every step)")
    args = ap.parse_args()
    E = common.load_host().engine
    W = import_module(E.__name__ + ".warmstart")
    member = common.tae(args.encoder)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_pool = pool(seeds=args.pool_seeds)
    print(f"{x_pool.shape[0]} training pictures; {args.steps} steps of {args.batch} crops of {args.crop}²", flush=True)
    with torch.no_grad():
        channels = member(x_pool[:1, :, :64, :64]).shape[1]
    net = W.WarmStart(channels, member.multiple)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    s = E.settings_for("default", "default", "on")
    budget = E.AdaptiveBudget(s.eps, floor=s.floor, min_psnr=s.min_psnr)
    for p in member.module.parameters():
        p.requires_grad_(False)
    P = import_module(E.__name__ + ".precision")
    O = import_module(E.__name__ + ".objectives")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if P.cpu_has_fast_bf16() else contextlib.nullcontext
    decoded = args.objective == "decoded"
    if decoded and member.decode is None:
        sys.exit(f"--objective decoded needs {args.encoder}'s decoder beside its encoder")
    style = O.style_stack(member.module) if decoded else None
    start, run = time.perf_counter(), []
    for step in range(args.steps):
        x = crops(x_pool, args.batch, args.crop, gen)
        other = float(torch.rand((), generator=gen)) < 0.25
        t_pix = crops(x_pool, args.batch, args.crop, gen) if other else restyle(x, gen)
        budget.setup(x)
        with torch.no_grad(), autocast():
            z, t = member(x).float(), member(t_pix).float()
            if decoded:
                d_z, d_t = member.decode(z).float(), member.decode(t).float()
                s_t = [v.float() for v in O.style_stats_of(style, d_t)]
                dec0 = (d_z - d_t).flatten(1).pow(2).sum(1).clamp_min(1e-8)
                sty0 = O.style_distance(O.style_stats_of(style, d_z), s_t).clamp_min(1e-8)
        d0 = (z - t).flatten(1).pow(2).sum(1).clamp_min(1e-8)
        delta = net.start(z, t, budget.caps)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (budget.radius / norm).clamp(max=1.0).view(-1, 1, 1, 1)
        with autocast():
            z1 = member((x + delta).clamp(0, 1)).float()
            lat = (z1 - t).flatten(1).pow(2).sum(1) / d0
            if decoded:
                d1 = member.decode(z1).float()
                loss = (0.25 * lat + 0.5 * (d1 - d_t).flatten(1).pow(2).sum(1) / dec0
                        + 0.25 * O.style_distance(O.style_stats_of(style, d1), s_t) / sty0).mean()
            else:
                loss = lat.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = (step + 1) / args.steps  # the cosine decay runs over the steps or the minutes, whichever ends first
        if args.minutes:
            done = max(done, (time.perf_counter() - start) / (60 * args.minutes))
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        run.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: {args.objective} loss left {sum(run[-25:]) / 25:.4f} "
                  f"(gain {1 - math.sqrt(sum(run[-25:]) / 25):.3f}), {time.perf_counter() - start:.0f} s", flush=True)
        if args.minutes and time.perf_counter() - start > 60 * args.minutes:
            print(f"stopped after {step + 1} steps ({args.minutes:g} min)", flush=True)
            break
    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file
    path = os.path.join(args.out, f"{member.name}.safetensors")
    meta = {"config": json.dumps(net.config()), "encoder": member.name,
            "training": json.dumps({k: v for k, v in vars(args).items() if k != "out"})}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
