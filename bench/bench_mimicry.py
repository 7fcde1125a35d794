"""Mimicry in miniature (issue 16), first section: does a miniature latent diffusion model trained here
reproduce its own training set's style? (DESIGN.md §7: fit first; a protection score from a model that does not
fit is no score.)

Artists: sets of one consistent style made by bench/devset.py's generators with many seeds (flat colour, line
art, brush-stroke painting, photographs), 256² sources cut into 128² crops, encoded with TAEF2 into
``[32, 16, 16]`` latents. For each artist a model is trained on the clean crops and one on the target-style crops
(same seed, same data order), 64 samples each are decoded with TAEF2's decoder, and the fit check is printed:
the style distance from each model's samples to its own training set, in units of the artist → target distance,
in two measures that the cloak is never made against: engine/style_score.py's pixel measure and Gram matrices
of TAESANA's encoder features (a second pretrained network, another latent space). Both reference sets are the
crops decoded through TAEF2 (D(E(x))), so the decoder's own loss of detail is not counted as a shift.

    .host/venv/bin/python bench/bench_mimicry.py --artists flat --steps 600
    .host/venv/bin/python bench/bench_mimicry.py                      # all four artists

Section ``shift`` (``--sections shift``): the same artist's sources cloaked by GlazePerturb's engine path
(default, robustness on), by the plain reference PGD at the level nearest its PSNR (5/255) and by equal-PSNR
Gaussian noise; a model trained on each set, and on the clean and target sets, with the same seed and data
order; the target share of each model's samples, the perfect-mimic share (D(E(x')) of the set itself, no
training) and each model's fit.

Trained models and cloaked sets are cached in bench/out/mimicry/ (keyed by the data, the seed and the
settings). Not yet here: the scraper's pipeline (JPEG, resize, purification of the training set).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np
import torch

import common
import devset

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "mimicry")


def artist_sources(name: str, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sources [count, 3, 256, 256], targets)`` of one artist: one consistent style over many seeds."""
    if name == "flat":
        imgs = [devset._flat(256, 100 + i) for i in range(count)]
    elif name == "lineart":
        imgs = [devset._lineart(256, 200 + i) for i in range(count)]
    elif name == "painting":
        photos = ("chelsea", "coffee", "astronaut", "rocket")
        imgs = [devset._painting(devset._photo(photos[i % len(photos)], 256), 300 + i) for i in range(count)]
    elif name == "photo":
        return _with_targets(common.photos(256, count), "photo")
    else:
        raise ValueError(f"unknown artist {name!r}; choose flat, lineart, painting or photo")
    x = torch.from_numpy(np.stack([np.round(i * 255) / 255 for i in imgs]).astype(np.float32)).permute(0, 3, 1, 2)
    return _with_targets(x.contiguous(), name)


def _with_targets(x: torch.Tensor, name: str):
    kind = "photo_x" if name == "photo" else name
    return x, devset.targets_for(x, [kind] * x.shape[0])


def crops(x: torch.Tensor, side: int = 128, stride: int = 64) -> torch.Tensor:
    """Every ``side``² crop on a ``stride`` grid of each image: ``[N * k, 3, side, side]``."""
    out = [x[..., i:i + side, j:j + side] for i in range(0, x.shape[-2] - side + 1, stride)
           for j in range(0, x.shape[-1] - side + 1, stride)]
    return torch.stack(out, 1).flatten(0, 1).contiguous()


class StyleJudge:
    """The two style measures the cloak is never made against: pixel statistics (engine.style_score) and Gram
    matrices of TAESANA's encoder features at 1/4 scale (64 channels)."""

    def __init__(self, E):
        from importlib import import_module
        self.score = import_module("ComfyUI-Cloak.engine.style_score")
        sana = common.tae("taesana")
        self.features = torch.nn.Sequential(*list(sana.module.children())[:5]).float().eval() if sana else None

    def pixel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.score.pixel_style_features(x[i:i + 1]) for i in range(x.shape[0])])

    def sana(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = torch.cat([self.features(x[i:i + 8]) for i in range(0, x.shape[0], 8)]).float()
        b, c = f.shape[:2]
        f = f.reshape(b, c, -1)
        mean = f.mean(-1)
        centred = f - mean[..., None]
        gram = (centred @ centred.transpose(1, 2) / f.shape[-1]).flatten(1)
        return torch.cat([mean, gram], 1)

    def measures(self):
        return {"pixel": self.pixel, **({"taesana": self.sana} if self.features is not None else {})}


def encode(member, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([member(x[i:i + 16]) for i in range(0, x.shape[0], 16)]).float()


def decode(member, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([member.decode(z[i:i + 16]) for i in range(0, z.shape[0], 16)]).float().clamp(0, 1)


def trained(M, latents: torch.Tensor, settings, config, tag: str):
    """A model trained on ``latents``, from the cache when the same data, seed and settings were trained before."""
    key = hashlib.sha1(latents.numpy().tobytes() + repr((settings, config)).encode()).hexdigest()[:16]
    path = os.path.join(OUT, f"{tag}-{key}.pt")
    if os.path.isfile(path):
        return M.load(path), 0.0
    os.makedirs(OUT, exist_ok=True)
    start = time.perf_counter()
    model = M.train(latents, None, config, settings)
    M.save(model, path)
    return model, time.perf_counter() - start


def section_fit(E, M, artists, steps, seeds, samples):
    member = common.tae("taef2")
    if member is None or member.decode is None:
        raise SystemExit("TAEF2 encoder and decoder not found in ../shared/models/taef2: the bench needs them")
    judge = StyleJudge(E)
    config = M.MiniConfig(channels=32, width=64)
    print(f"\n== fit: samples' style distance to their own training set / artist-to-target distance "
          f"({steps} steps, batch 32, {samples} samples, 40 DDIM steps; target <= 0.25) ==")
    print(f"{'artist':9} {'seed':>4} {'trained on':>10} {'crops':>5} {'train s':>7} "
          + " ".join(f"{m + ' fit':>12} {m + ' share':>13}" for m in judge.measures()))
    for name in artists:
        x, t = artist_sources(name)
        xc, tc = crops(x), crops(t)
        za, zt = encode(member, xc), encode(member, tc)
        ref = {"artist": decode(member, za), "target": decode(member, zt)}
        feats = {m: {k: f(v) for k, v in ref.items()} for m, f in judge.measures().items()}
        # the measure's own floor: the crops of half the sources against those of the other half (new pictures of
        # the same style differ by this much), in the same units as the fit
        half = za.shape[0] // 2
        floors = {m: M.fit_ratio(v["artist"][:half], v["artist"][half:], v["artist"], v["target"])
                  for m, v in feats.items()}
        print(f"{name:9} floor (half the sources vs the other half): "
              + ", ".join(f"{m} {v:.3f}" for m, v in floors.items()), flush=True)
        for seed in seeds:
            settings = M.TrainSettings(steps=steps, batch=32, seed=seed)
            for label, z in (("clean", za), ("target", zt)):
                model, sec = trained(M, z, settings, config, f"{name}-{label}")
                out = decode(member, M.sample(model, samples, tuple(z.shape[-2:]), steps=40, seed=1000 + seed))
                cells = []
                for m, f in judge.measures().items():
                    fs, fa, ft = f(out), feats[m]["artist"], feats[m]["target"]
                    fit = M.fit_ratio(fs, fa if label == "clean" else ft, fa, ft)
                    share = (fs.mean(0) - fa.mean(0)).norm() / ((fs.mean(0) - fa.mean(0)).norm()
                                                                 + (fs.mean(0) - ft.mean(0)).norm()).clamp_min(1e-12)
                    cells.append(f"{fit:12.3f} {float(share):13.3f}")
                print(f"{name:9} {seed:>4} {label:>10} {z.shape[0]:>5} {sec:7.0f} " + " ".join(cells), flush=True)


def target_share(fs: torch.Tensor, fa: torch.Tensor, ft: torch.Tensor) -> float:
    """Where a set's mean style lies between the artist's (0) and the target's (1)."""
    da, dt = (fs.mean(0) - fa.mean(0)).norm(), (fs.mean(0) - ft.mean(0)).norm()
    return float(da / (da + dt).clamp_min(1e-12))


def cloaked_sets(E, enc, x, t, cache: str) -> dict:
    """The artist's sources cloaked three ways, cached: GlazePerturb's engine path at default (robustness on),
    the plain reference PGD at the 8-bit level nearest default's PSNR (5/255, no EOT), and Gaussian noise at each
    cloak's own PSNR; plus each image's PSNR."""
    if os.path.isfile(cache):
        return torch.load(cache, weights_only=True)
    import glaze_eval as G
    sets = {"cloaked": [], "reference": [], "noise": []}
    psnr = {k: [] for k in sets}
    gen = torch.Generator().manual_seed(0)
    for i in range(x.shape[0]):
        xi, ti = x[i:i + 1], t[i:i + 1]
        ours, rep = G.cloak(E, enc, xi, ti, E.settings_for("default", "default", "on"))
        ref, ref_rep = G.cloak(E, enc, xi, ti, E.reference_settings(5 / 255, 100))
        rmse = float((ours - xi).pow(2).mean().sqrt())
        noise = torch.randn(xi.shape, generator=gen)
        noisy = torch.round((xi + noise * rmse / float(noise.pow(2).mean().sqrt())).clamp(0, 1) * 255) / 255
        for k, img in (("cloaked", ours), ("reference", ref), ("noise", noisy)):
            sets[k].append(img)
            psnr[k].append(float(E.psnr(img, xi)[0]))
        print(f"  image {i}: PSNR ours {psnr['cloaked'][-1]:.2f}, reference {psnr['reference'][-1]:.2f}, "
              f"noise {psnr['noise'][-1]:.2f}; gain ours {rep['target_gain']:.3f}, reference "
              f"{ref_rep['target_gain']:.3f}", flush=True)
    out = {**{k: torch.cat(v) for k, v in sets.items()}, "psnr": {k: sum(v) / len(v) for k, v in psnr.items()}}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    torch.save(out, cache)
    return out


def section_shift(E, M, artists, steps, seeds, samples):
    """Train on the clean, cloaked, reference, noise and target sets (same seed, same data order) and read where
    each model's samples lie between the artist and the target; the perfect-mimic score (D(E(x')) of the set,
    no training) beside it."""
    member = common.tae("taef2")
    enc = E.as_ensemble(member)
    judge = StyleJudge(E)
    config = M.MiniConfig(channels=32, width=64)
    print(f"\n== shift: target share of each model's samples (0 = the artist's decoded crops, 1 = the target's); "
          f"{steps} steps, {samples} samples; fit = distance to its own training set / artist-to-target ==")
    for name in artists:
        x, t = artist_sources(name)
        key = hashlib.sha1(x.numpy().tobytes()).hexdigest()[:12]
        sets = cloaked_sets(E, enc, x, t, os.path.join(OUT, f"{name}-sets-{key}.pt"))
        print(f"{name}: mean PSNR ours {sets['psnr']['cloaked']:.2f} dB, reference {sets['psnr']['reference']:.2f}, "
              f"noise {sets['psnr']['noise']:.2f}")
        sources = {"clean": x, "cloaked": sets["cloaked"], "reference": sets["reference"], "noise": sets["noise"],
                   "target": t}
        latents = {k: encode(member, crops(v)) for k, v in sources.items()}
        ref = {"artist": decode(member, latents["clean"]), "target": decode(member, latents["target"])}
        feats = {m: {k: f(v) for k, v in ref.items()} for m, f in judge.measures().items()}
        print(f"{'set':10} {'seed':>4} " + " ".join(f"{m + ' mimic':>14} {m + ' trained':>14} {m + ' fit':>10}"
                                                     for m in judge.measures()))
        for seed in seeds:
            settings = M.TrainSettings(steps=steps, batch=32, seed=seed)
            for label, z in latents.items():
                model, _ = trained(M, z, settings, config, f"{name}-{label}")
                out = decode(member, M.sample(model, samples, tuple(z.shape[-2:]), steps=40, seed=1000 + seed))
                own = decode(member, z)  # the perfect mimic of this set
                cells = []
                for m, f in judge.measures().items():
                    fa, ft, fown, fs = feats[m]["artist"], feats[m]["target"], f(own), f(out)
                    cells.append(f"{target_share(fown, fa, ft):14.3f} {target_share(fs, fa, ft):14.3f} "
                                 f"{M.fit_ratio(fs, fown, fa, ft):10.3f}")
                print(f"{label:10} {seed:>4} " + " ".join(cells), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artists", default="flat,lineart,painting,photo")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--sections", default="fit", help="fit, shift (comma-separated)")
    args = ap.parse_args()
    E = common.load_host().engine
    from importlib import import_module
    M = import_module("ComfyUI-Cloak.engine.miniature")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    seeds = [int(s) for s in args.seeds.split(",")]
    if "fit" in args.sections:
        section_fit(E, M, args.artists.split(","), args.steps, seeds, args.samples)
    if "shift" in args.sections:
        section_shift(E, M, args.artists.split(","), args.steps, seeds, args.samples)


if __name__ == "__main__":
    main()
