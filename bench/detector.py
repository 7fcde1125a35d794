"""Detectability (issue 38, item 5): can a small network trained here tell cloaked crops from clean ones, on
artists it was not trained on?

For each cloaked set (the mimicry bench's cached cloaks: GlazePerturb's default, plain PGD at matched PSNR, any
variant the bench made, all on the 8-bit grid as a scraper downloads them), a detector (bench/classifier_judge.py's
network: four convolutions, trained from scratch, seeded) learns clean (0) vs cloaked (1) 64² crops of the
``--train`` artists, then scores the ``--test`` artists' crops: the **true-positive rate at 1 % false positives**
(the threshold is the 99th percentile of its scores on the test artists' clean crops) and the AUC. A measurement,
not a target: a cloak that is detected and left out of training protects the artist; one detected and cleaned does
not (the mimicry bench's JPEG, resize and purifier rows say what cleaning leaves).

    .host/venv/bin/python bench/detector.py --train painting --test lineart \\
        --sets "cloaked,reference,n30:steps=30:decoded_every=3:lr=0.5"

Reads bench/out/mimicry/<artist>-cloaks (made by bench_mimicry.py with the same ``--sources`` and set spelling);
a set not cached there is cloaked first (slow: the default takes minutes a picture on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import os

import torch

import bench_mimicry as BM
import classifier_judge as CJ
import common

CROP = 64


def crops_of(sets: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    M = BM._engine("miniature")
    pics = x if name == "clean" else BM.quantise(sets[name])
    return M.crops(pics, CROP, CROP // 2)


def auc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """The chance that a cloaked crop scores above a clean one (ties count half)."""
    d = pos[:, None] - neg[None, :]
    return float((d > 0).float().mean() + 0.5 * (d == 0).float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="painting", help="artists whose crops the detector learns from")
    ap.add_argument("--test", default="lineart", help="artists it is tested on (none of --train)")
    ap.add_argument("--sets", default="cloaked,reference", help="cloaked sets, bench_mimicry's spelling")
    ap.add_argument("--sources", type=int, default=6)
    ap.add_argument("--seeds", default="0,1", help="detector training seeds (the spread is printed)")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    train, test = args.train.split(","), args.test.split(",")
    if set(train) & set(test):
        raise SystemExit("--train and --test must not share an artist: a detector is judged on artists it never saw")
    E = common.load_host().engine
    enc = E.as_ensemble(BM.taef2_with_decoder("the detector"))
    specs = [s for s in args.sets.split(",") if s]
    names = [s.split(":")[0] for s in specs]
    extra = BM.variant_settings(E, [s for s in specs if s.split(":")[0] not in ("cloaked", "reference", "noise")])
    data = {}
    for artist in train + test:
        x, t = BM.artist_sources(artist, args.sources)
        sets = BM.cloaked_sets(E, enc, x, t, os.path.join(BM.OUT, f"{artist}-cloaks"), extra)
        data[artist] = {n: crops_of(sets, n, x) for n in ["clean", *names]}
        data[artist]["psnr"] = {n: sets["psnr"][n] for n in names}
    print(f"detector: trained on {train}, tested on {test}; {args.sources} pictures of 256² an artist -> 64² crops; "
          f"{args.steps} steps; seeds {args.seeds}")
    print("(AUC seen: on the last picture of each training artist, held out of training; the rest: the test "
          "artists; one figure per seed)")
    print(f"{'set':12} {'PSNR (test)':>11} {'AUC seen':>16} {'TPR @ 1% FPR':>16} {'AUC':>16}")
    per = data[train[0]]["clean"].shape[0] // args.sources  # crops a picture
    for n in names:
        neg_train = torch.cat([data[a]["clean"][:-per] for a in train])
        pos_train = torch.cat([data[a][n][:-per] for a in train])
        tprs, aucs, seen = [], [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            net = CJ.train_net(neg_train, pos_train, seed, args.steps)
            seen.append(auc(torch.cat([CJ.logits(net, data[a]["clean"][-per:]) for a in train]),
                            torch.cat([CJ.logits(net, data[a][n][-per:]) for a in train])))
            neg = torch.cat([CJ.logits(net, data[a]["clean"]) for a in test])
            pos = torch.cat([CJ.logits(net, data[a][n]) for a in test])
            threshold = torch.quantile(neg, 0.99)
            tprs.append(float((pos > threshold).float().mean()))
            aucs.append(auc(neg, pos))
        psnr = sum(data[a]["psnr"][n] for a in test) / len(test)
        print(f"{n:12} {psnr:11.2f} {' / '.join(f'{v:.3f}' for v in seen):>16} "
              f"{' / '.join(f'{v:.3f}' for v in tprs):>16} {' / '.join(f'{v:.3f}' for v in aucs):>16}", flush=True)


if __name__ == "__main__":
    main()
