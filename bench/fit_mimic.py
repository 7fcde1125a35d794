"""The mimicry bench's fit check, taken apart (issue 16): how much of a model's fit is the check's own sampling
noise, and what the mimic's training settings buy on one artist's clean set.

``--floor``: per artist (8 training sources of 256², 64² crops at stride 32, through TAEF2 and back), the fit of N
crops drawn with replacement from the training set itself (a perfect memoriser's N samples; mean of 20 draws) and of
N crops of the artist's 16 other pictures (a model that learned the artist, not these 8 pictures).

Otherwise: one clean model of ``--artist`` trained with ``--steps`` (and ``--lr``; ``--caption`` conditions it on
the source picture, a per-image caption, and samples the pictures in turn), cached in bench/out/fit_mimic/, then
its fit and target share with ``--samples`` samples, 40 ancestral DDIM steps, autoguidance 1.

    .host/venv/bin/python bench/fit_mimic.py --floor --artists flat,lineart,painting,photo
    .host/venv/bin/python bench/fit_mimic.py --artist photo --steps 3000
    .host/venv/bin/python bench/fit_mimic.py --artist photo --caption
"""
from __future__ import annotations

import argparse
import os

import torch

import bench_mimicry as B
import common

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "fit_mimic")


def pixels(member, M, x):
    return B.decode(member, B.encode(member, M.crops(x, M.MIMIC_CROP, M.MIMIC_CROP // 2)))


def floors(member, M, judge, artists):
    for name in artists:
        x, t = B.artist_sources(name, 24)
        train = pixels(member, M, x[:8])
        scorer = B.Scorer(M, judge, train, pixels(member, M, t[:8]))
        own, held = scorer.features(train), scorer.features(pixels(member, M, x[8:]))
        for n in (128, 256, 512, 1024):
            fits = {what: " / ".join(f"{v:.3f}" for v in scorer.floor(own, n, 20, pool).values())
                    for what, pool in (("training set", own), ("other pictures", held))}
            print(f"{name:9} {n:5} crops from the training set: fit {fits['training set']}; from the artist's other "
                  f"pictures: {fits['other pictures']}  ({' / '.join(own)})", flush=True)


def one_model(member, M, judge, args):
    x, t = B.artist_sources(args.artist, 8)
    per = M.crops(x[:1], M.MIMIC_CROP, M.MIMIC_CROP // 2).shape[0]
    z = B.encode(member, M.crops(x, M.MIMIC_CROP, M.MIMIC_CROP // 2))
    labels = torch.arange(8).repeat_interleave(per) if args.caption else None
    scorer = B.Scorer(M, judge, pixels(member, M, x), pixels(member, M, t))
    config = M.MiniConfig(channels=32, classes=8 if args.caption else 0, **M.MIMIC_CONFIG)
    settings = M.TrainSettings(steps=args.steps, seed=args.seed, bf16=M.bf16_is_fast("cpu"),
                               **{**M.MIMIC_SETTINGS, "lr": args.lr})
    model, sec = B.trained(M, z, settings, config, f"{args.artist}-clean", labels, out=OUT)
    lab = torch.arange(args.samples) % 8 if args.caption else None
    out = B.decode(member, M.sample(model, args.samples, (8, 8), M.Sampler(
        B.DDIM, eta=1.0, guidance=M.MIMIC_GUIDANCE, bf16=settings.bf16), seed=1000 + args.seed, labels=lab))
    own, got = scorer.features(B.decode(member, z)), scorer.features(out)
    fit, share = scorer.fit(got, own), scorer.share(got)
    print(f"{args.artist} clean, {args.steps} steps, lr {args.lr}, {'caption per picture' if args.caption else 'no caption'}, "
          f"seed {args.seed}, {args.samples} samples (trained in {sec:.0f} s): fit "
          + " / ".join(f"{fit[m]:.3f}" for m in fit) + ", target share " + " / ".join(f"{share[m]:.3f}" for m in share)
          + f" ({' / '.join(fit)})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor", action="store_true")
    ap.add_argument("--artists", default="flat,lineart,painting,photo")
    ap.add_argument("--artist", default="photo")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=B.SAMPLES)
    ap.add_argument("--caption", action="store_true")
    args = ap.parse_args()
    E = common.load_host().engine
    M = B._engine("miniature")
    member, judge = B.taef2_with_decoder(), B.StyleJudge(E)
    if args.floor:
        floors(member, M, judge, args.artists.split(","))
    else:
        one_model(member, M, judge, args)


if __name__ == "__main__":
    main()
