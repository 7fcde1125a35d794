"""Poison in miniature (issue 17): does a model trained on poisoned images of concept A draw concept B for A?

Concepts (captions are concept ids): five sets of 64² images cut from 256² pictures (16 a picture, no overlap):
``flat`` (A: bench/devset.py's flat-colour shapes), ``scene`` (flat illustrated landscapes: the concept related to
A, for bleed-through), ``lineart`` (B: ink strokes), ``painting`` (brush strokes of photo tiles) and ``photo``
(scikit-image's photo tiles); 8 pictures a concept for training, 2 others held out for the classifier.

A class-conditional miniature model (engine/miniature.py, TAEF2 latents [32, 8, 8], v-prediction,
EMA; ``MODELS`` below, ``--model``) is trained with the same seed and data order on each set: **clean**;
**poisoned**: the first k of A's images poisoned toward B by NightshadePoison's engine path (intensity preset,
robustness on, TAEF2, latent objective), its anchors being B images the *clean* model draws itself, as Nightshade
does (each image paired with the nearest anchor by latent); **dirty-label**: the same k of A's images replaced by
B images captioned A (the bound an attacker gets with no perturbation); **reference**: the plain reference PGD's
poison (L∞ sign steps, no EOT) toward the same anchors at the L∞ level whose mean PSNR is nearest the poison's;
**decoded** (``--sets …,decoded``): the same poison with the style cloak's method (the decoded distance mixed in at 0.5, flat-area floor 0.5); **noiseobj**: the noise objective against the clean model's denoiser; **noise**: Gaussian noise at each poison's own PSNR. k runs over ``--counts`` (percent of A's images; the poisoned
images of a smaller count are the first of a larger one's).

Judge (``--judge``): by default a multinomial logistic regression on TAESANA encoder features (channel means and
Gram matrices at 1/4 scale: the network the poison is never made against), fitted on the decoded clean training
images D(E(x)) of each concept *and* on 64 samples a concept of the clean seed-0 model (a sampling seed never
scored), so that a concept the small model draws poorly still reads as itself; its accuracy on the held-out
pictures' decoded images and on the clean model's samples of another sampling seed printed (``logistic``: the
decoded images only; ``centroid``: the nearest centroid of the first figures). Per model, 64 samples a concept (ancestral
DDIM, 40 steps), decoded with TAEF2: **A->B** = the share of A-prompted samples classified B; **bleed** = the same
for the related concept; **collateral** = for the unrelated concepts (painting, photo); **own** = the share of
each concept's samples classified as that concept (the model's fit: a model that cannot draw its concepts
cannot be poisoned meaningfully).

    .host/venv/bin/python bench/bench_poison.py                       # default preset, counts 10,25,50, seeds 0,1,2
    .host/venv/bin/python bench/bench_poison.py --counts 25 --seeds 0 --sets clean,poisoned,dirty
    .host/venv/bin/python bench/bench_poison.py --counts 25 --seeds 0 --screen --budget 32 --anchors sdedit:0.6
    .host/venv/bin/python bench/bench_poison.py --steer [taesana]    # how far an encoder's latent steers at all
    .host/venv/bin/python bench/bench_poison.py --quick               # a smoke run (tiny steps), no figure

Poisoned images and trained models are cached in bench/out/poison/ (keyed by the data, the seed and the settings).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import time

import numpy as np
import torch

import bench_mimicry as BM
import common
import devset

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "poison")
CONCEPTS = ("flat", "scene", "lineart", "painting", "photo")
A, RELATED, B = 0, 1, 2
TRAIN_PICTURES, TEST_PICTURES, SIDE, CROP = 8, 2, 256, 64
MODELS = {  # --model: the network, its training and its sampling guidance
    "small": (dict(width=64, attention=False, noise_shift=1.0), dict(batch=32, lr=1e-3, weak_width=0), 0.0),
    "mimic": None,  # the mimicry bench's mimic (engine.miniature.MIMIC_*), filled in at run time
}
SAMPLES, DDIM, ANCHORS = 64, 40, 16


def pictures(concept: str, first: int, count: int) -> torch.Tensor:
    """``count`` 256² pictures of ``concept`` from picture number ``first`` on, ``[count, 3, 256, 256]``."""
    idx = range(first, first + count)
    if concept == "flat":
        imgs = [devset._flat(SIDE, 500 + i) for i in idx]
    elif concept == "scene":
        imgs = [devset._flat_scene(SIDE, 600 + i) for i in idx]
    elif concept == "lineart":
        imgs = [devset._lineart(SIDE, 700 + i) for i in idx]
    elif concept in ("painting", "photo"):
        tiles = BM.photo_tiles(40)
        # painting and photo take interleaved tiles, so the two concepts show different places
        picks = [tiles[2 * i + (concept == "photo")] for i in idx]
        imgs = [devset._painting(t, 800 + i) for i, t in zip(idx, picks)] if concept == "painting" else picks
    else:
        raise ValueError(concept)
    x = np.stack([np.round(np.asarray(i, dtype=np.float32) * 255) / 255 for i in imgs]).astype(np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def images(concept: str, first: int, count: int) -> torch.Tensor:
    """The 64² images (16 a picture, no overlap) of ``count`` pictures of ``concept``."""
    M = BM._engine("miniature")
    return M.crops(pictures(concept, first, count), CROP, CROP)


class Classifier:
    """A judge of concepts in TAESANA features (BM.StyleJudge.sana, square-rooted and standardised).

    ``kind`` ``centroid``: nearest class centroid. ``logistic``: multinomial logistic regression (L2, its strength
    picked on a fifth of the fitting images held back, then refitted on all). ``decoded`` is one tensor of images per
    class; ``extra`` (optional) more images per class, fitted beside them (the bench adds the clean model's own
    samples, so that a concept drawn *poorly* by a small model still reads as that concept and only a concept drawn
    *as another* reads as the other)."""

    def __init__(self, judge: BM.StyleJudge, decoded: list[torch.Tensor], extra: list[torch.Tensor] | None = None,
                 kind: str = "logistic"):
        self.judge, self.kind, self.with_samples = judge, kind, extra is not None
        groups = [decoded] + ([extra] if extra is not None else [])
        feats = [torch.cat([self.raw(g[k]) for g in groups]) for k in range(len(decoded))]
        allf = torch.cat(feats)
        self.mean, self.std = allf.mean(0), allf.std(0).clamp_min(1e-6)
        feats = [(f - self.mean) / self.std for f in feats]
        self.centroids = torch.stack([f.mean(0) for f in feats])
        if kind == "logistic":
            x = torch.cat(feats)
            y = torch.cat([torch.full((f.shape[0],), k, dtype=torch.long) for k, f in enumerate(feats)])
            self.weight = self._fit_with_holdout(x, y, len(feats))
        elif kind != "centroid":
            raise ValueError(f"unknown classifier {kind!r}: centroid or logistic")

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        f = self.judge.sana(x)
        return torch.sign(f) * f.abs().sqrt()  # Gram entries spread over decades: a square root evens them

    @staticmethod
    def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, lam: float) -> torch.Tensor:
        xb = torch.cat([x, torch.ones(x.shape[0], 1)], 1)
        w = torch.zeros(xb.shape[1], classes, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xb @ w, y) + lam * w[:-1].square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return w.detach()

    def _fit_with_holdout(self, x, y, classes):
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(x.shape[0], generator=g)
        held, fit = order[: x.shape[0] // 5], order[x.shape[0] // 5:]
        best = None
        for lam in (1e-4, 1e-3, 1e-2, 1e-1):
            w = self._fit(x[fit], y[fit], classes, lam)
            acc = float(((self._logits(x[held], w)).argmax(1) == y[held]).float().mean())
            if best is None or acc > best[0]:
                best = (acc, lam)
        return self._fit(x, y, classes, best[1])

    @staticmethod
    def _logits(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, torch.ones(f.shape[0], 1)], 1) @ w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.raw(x) - self.mean) / self.std
        if self.kind == "logistic":
            return self._logits(f, self.weight).argmax(1)
        return torch.cdist(f, self.centroids).argmin(1)


def poisoned_images(NS, enc, x: torch.Tensor, anchors: torch.Tensor, settings, tag: str, objective="latent",
                    predictor=None, pairing="nearest") -> dict:
    """``x`` poisoned toward ``anchors`` with ``settings`` (NightshadePoison's engine path; ``objective`` latent,
    or noise with the diffusion model ``predictor``; ``pairing`` nearest, or one per image: image i toward anchor i),
    cached in chunks of 16; returns ``{"images", "psnr" [N], "nearer" [N] (ends nearer its anchor's latent than its
    own original's), "gain" [N]}``."""
    os.makedirs(OUT, exist_ok=True)
    out = {"images": [], "psnr": [], "nearer": [], "gain": []}
    start = time.perf_counter()
    for i in range(0, x.shape[0], 16):
        xi = x[i:i + 16]
        ai = anchors if pairing == "nearest" else anchors[i:i + 16]
        key = hashlib.sha1(xi.numpy().tobytes() + ai.numpy().tobytes()
                           + repr((settings, objective, pairing)).encode()).hexdigest()
        path = os.path.join(OUT, f"{tag}-{key[:16]}.pt")
        if os.path.isfile(path):
            done = torch.load(path, weights_only=True)
        else:
            with torch.inference_mode(False), torch.enable_grad():
                res = NS.poison_images(xi, enc, ai, settings, objective, predictor, seed=i, pairing=pairing)
            done = {"images": res.cloak.images, "psnr": torch.tensor([r["psnr"] for r in res.cloak.reports]),
                    "nearer": torch.tensor([c["nearer_anchor"] for c in res.checks]),
                    "gain": torch.tensor([c["latent_gain"] for c in res.checks])}
            torch.save(done, path)
        for k in out:
            out[k].append(done[k])
        print(f"  {tag}: {i + xi.shape[0]}/{x.shape[0]} images ({time.perf_counter() - start:.0f} s)", flush=True)
    return {k: torch.cat(v) for k, v in out.items()}


def reference_poison(E, NS, enc, x, anchors, goal: float, tag: str, pairing="nearest") -> tuple[dict, int]:
    """The plain reference PGD's poison at the 8-bit L∞ level whose mean PSNR is nearest ``goal``
    (bench_mimicry.nearest_level)."""
    def run(level):
        out = poisoned_images(NS, enc, x, anchors, E.reference_settings(level / 255, 100), f"{tag}-{level}",
                              pairing=pairing)
        return out, float(out["psnr"].mean())

    return BM.nearest_level(goal, run)


def noise_like(x: torch.Tensor, psnr: torch.Tensor) -> torch.Tensor:
    """Gaussian noise at each image's given PSNR (8-bit levels)."""
    return torch.cat([BM.gaussian_at(x[i:i + 1], 10 ** (-float(psnr[i]) / 20), i) for i in range(x.shape[0])])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,25,50", help="poison counts, percent of A's training images")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="default", help="NightshadePoison intensity preset (low, default, high)")
    ap.add_argument("--sets", default="clean,poisoned,dirty,reference,noise,noiseobj",
                    help="noiseobj: poisoned with the noise objective against the clean model's own denoiser; decoded: "
                         "poisoned with the decoded distance mixed in (0.5) and flat floor 0.5, as the style cloak")
    ap.add_argument("--budget", type=float, default=None,
                    help="a custom largest change in 1/255 steps (NightshadePoison's intensity custom, no PSNR "
                         "floor) in place of --preset: a dose curve")
    ap.add_argument("--robustness", default="on", help="NightshadePoison's robustness (off, on, strong)")
    ap.add_argument("--quality", default="default", help="NightshadePoison's render_quality (faster, default, slowest)")
    ap.add_argument("--floor", type=float, default=None,
                    help="the adaptive budget's flat-area share in place of NightshadePoison's (0.1); 1 = uniform")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--model", default="small", choices=sorted(MODELS),
                    help="small: width 64, no attention, no guidance (~1.5 min a model); mimic: the mimicry bench's "
                         "width-96 model with attention and autoguidance from a width-64 twin (~5 min)")
    ap.add_argument("--quick", action="store_true", help="2 training pictures a concept, 16 samples (a smoke run)")
    ap.add_argument("--judge", default="logistic+samples", choices=("logistic+samples", "logistic", "centroid"),
                    help="the classifier of samples: logistic regression or nearest centroid on TAESANA features of "
                         "the decoded clean training images; +samples: fitted on the clean model's own samples too "
                         "(a sampling seed never scored)")
    ap.add_argument("--anchors", default="samples",
                    help="samples: 16 B images the clean model draws, each image paired with the nearest by latent "
                         "(Nightshade's recipe); sdedit:S: one anchor per image, the image redrawn as B by the clean "
                         "model (SDEdit: noised to S of its schedule, denoised under caption B), so the anchor keeps "
                         "the image's layout")
    ap.add_argument("--screen", action="store_true",
                    help="stop after the poisons: print how the judge reads each poison set's D(E(x')) (what a "
                         "model that learned the poisoned latents perfectly would draw), no poisoned model trained")
    ap.add_argument("--steer", nargs="?", const="taef2", default=None, metavar="ENCODER",
                    help="only measure how far an encoder's latent (taef2, or taesana) can be steered at all: "
                         "unconstrained Adam on the latent distance (no EOT, no PSNR floor, L-inf caps 8, 32, 255/255) "
                         "from 8 images of each concept toward 8 line-art latents, the gain and PSNR after 100 and "
                         "300 steps")
    args = ap.parse_args()
    if args.budget is not None:
        args.preset = f"custom {args.budget:g}/255"
    E = common.load_host().engine
    if args.steer:
        return steer(E, common.tae(args.steer))
    M = BM._engine("miniature")
    NS = BM._engine("nightshade")
    member = BM.taef2_with_decoder()
    enc = E.as_ensemble(member)
    judge = BM.StyleJudge(E)
    if judge.features is None:
        raise SystemExit("TAESANA's encoder not found in ../shared/models/taesana: the classifier needs it")
    n_train, samples = (2, 16) if args.quick else (TRAIN_PICTURES, SAMPLES)
    counts = [int(c) for c in args.counts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = set(args.sets.split(","))
    bf16 = M.bf16_is_fast("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 {bf16}; concepts {CONCEPTS} "
          f"(A {CONCEPTS[A]}, related {CONCEPTS[RELATED]}, B {CONCEPTS[B]}); {n_train} pictures a concept -> "
          f"{n_train * 16} images of {CROP}²; {args.steps} steps; preset {args.preset}", flush=True)

    train_x = [images(c, 0, n_train) for c in CONCEPTS]
    test_x = [images(c, n_train, TEST_PICTURES) for c in CONCEPTS]
    spare_b = images(CONCEPTS[B], n_train + TEST_PICTURES, n_train)  # dirty-label images: B pictures never trained on
    decoded_train = [BM.decode(member, BM.encode(member, x)) for x in train_x]
    decoded_test = [BM.decode(member, BM.encode(member, x)) for x in test_x]

    def accuracy(classify, sets, what):
        acc = [float((classify(x) == k).float().mean()) for k, x in enumerate(sets)]
        print(f"classifier ({classify.kind}{' + samples' if classify.with_samples else ''}) accuracy on {what}: "
              + ", ".join(f"{c} {a:.2f}" for c, a in zip(CONCEPTS, acc)) + f" (mean {sum(acc) / len(acc):.2f})",
              flush=True)

    kind = args.judge.split("+")[0]
    classify = Classifier(judge, decoded_train, kind=kind)
    accuracy(classify, decoded_test, "held-out decoded images")

    net, train_settings, guidance = MODELS[args.model] or (M.MIMIC_CONFIG, M.MIMIC_SETTINGS, M.MIMIC_GUIDANCE)
    config = M.MiniConfig(channels=32, classes=len(CONCEPTS), **net)
    labels = torch.cat([torch.full((x.shape[0],), k, dtype=torch.long) for k, x in enumerate(train_x)])
    n_a = train_x[A].shape[0]

    def train_on(a_images, tag, seed):
        z = BM.encode(member, torch.cat([a_images] + train_x[1:]))
        settings = M.TrainSettings(steps=args.steps, seed=seed, bf16=bf16, **train_settings)
        return BM.trained(M, z, settings, config, f"{tag}-s{seed}", labels, OUT)

    def draw(model, seed, concepts=range(len(CONCEPTS)), count=samples):
        ys = torch.cat([torch.full((count,), k, dtype=torch.long) for k in concepts])
        z = M.sample(model, ys.shape[0], (CROP // 8, CROP // 8), M.Sampler(DDIM, eta=1.0, guidance=guidance, bf16=bf16),
                     seed=1000 + seed, labels=ys)
        return BM.decode(member, z), ys

    rows = []

    def score(label, count, seed, model, sec):
        pics, ys = draw(model, seed)
        got = classify(pics)
        share_b = [float((got[ys == k] == B).float().mean()) for k in range(len(CONCEPTS))]
        own = [float((got[ys == k] == k).float().mean()) for k in range(len(CONCEPTS))]
        coll = sum(share_b[k] for k in range(len(CONCEPTS)) if k not in (A, RELATED, B)) / (len(CONCEPTS) - 3)
        rows.append((label, count, seed, share_b[A], share_b[RELATED], coll, own))
        where_a = [float((got[ys == A] == k).float().mean()) for k in range(len(CONCEPTS))]  # where A's samples go
        print(f"{label:10} {count:>5} {seed:>4} {share_b[A]:8.3f} {share_b[RELATED]:8.3f} {coll:10.3f}  "
              + " ".join(f"{o:.2f}" for o in own) + "  " + " ".join(f"{o:.2f}" for o in where_a) + f"  {sec:6.0f}",
              flush=True)

    # the clean model first: it draws the anchors (and, for the judge "+samples", more images of each concept)
    clean_models = {}
    for seed in seeds:
        clean_models[seed] = train_on(train_x[A], "clean", seed)
    if args.judge.endswith("+samples"):
        # sampling seeds 1077 / 1078: never the scored ones (1000 + the training seed)
        classify = Classifier(judge, decoded_train, _by_concept(*draw(clean_models[seeds[0]][0], 77)), kind=kind)
        accuracy(classify, decoded_test, "held-out decoded images")
        accuracy(classify, _by_concept(*draw(clean_models[seeds[0]][0], 78)),
                 f"the clean model's (seed {seeds[0]}) samples of another sampling seed")
    settings = E.settings_for(args.preset if args.budget is None else "custom", args.quality, args.robustness,
                              None if args.budget is None else args.budget / 255, kind="nightshade")
    if args.floor is not None:
        settings = dataclasses.replace(settings, floor=args.floor)
    k_max = max(round(n_a * c / 100) for c in counts)
    victims = train_x[A][:k_max]
    pairing = "nearest"
    tag = (args.preset if args.budget is None else f"b{args.budget:g}") + "".join(
        f"-{short}{value}" for short, value, usual in (("r", args.robustness, "on"), ("q", args.quality, "default"),
                                                       ("f", args.floor, None)) if value != usual)
    if args.anchors == "samples":
        anchors, _ = draw(clean_models[seeds[0]][0], 7, [B], ANCHORS)
    elif args.anchors.startswith("sdedit:"):
        strength = float(args.anchors.split(":", 1)[1])
        pairing, tag = "one per image", f"{tag}-sdedit{strength:g}"
        z = M.purify(clean_models[seeds[0]][0], BM.encode(member, victims), strength, steps=DDIM, seed=7, bf16=bf16,
                     labels=torch.full((k_max,), B, dtype=torch.long), eta=1.0)
        anchors = BM.decode(member, z)
    else:
        raise SystemExit(f"--anchors: samples or sdedit:S, got {args.anchors!r}")

    def read(pics, what):
        """How the judge reads D(E(pics)): what a model that learned these latents perfectly would draw."""
        got = classify(BM.decode(member, BM.encode(member, pics)))
        print(f"  {what}: D(E(x)) read as B {float((got == B).float().mean()):.2f}, as A "
              f"{float((got == A).float().mean()):.2f}", flush=True)

    read(anchors, f"anchors ({args.anchors})")
    read(victims, "the clean A images")
    read(spare_b[:k_max], "the dirty-label B images")
    poisons = poisoned_images(NS, enc, victims, anchors, settings, f"poison-{tag}", pairing=pairing)
    goal = float(poisons["psnr"].mean())
    print(f"poison ({args.preset}, anchors {args.anchors}) of {k_max} A images: PSNR {goal:.2f} dB, nearer their "
          f"anchor than their original {int(poisons['nearer'].sum())}/{k_max}, latent gain "
          f"{float(poisons['gain'].mean()):.3f}", flush=True)
    read(poisons["images"], "poisoned")
    ref = level = None
    if "reference" in wanted:
        ref, level = reference_poison(E, NS, enc, victims, anchors, goal, f"reference-{tag}", pairing)
        print(f"reference PGD ({level}/255) of the same images: PSNR {float(ref['psnr'].mean()):.2f} dB, nearer "
              f"{int(ref['nearer'].sum())}/{k_max}, latent gain {float(ref['gain'].mean()):.3f}", flush=True)
        read(ref["images"], "reference")
    decoded = None
    if "decoded" in wanted:
        # the style cloak's method on the poison: the decoded distance mixed in and the flat-area floor 0.5
        # (engine.cloak.KINDS["glaze"]), which moved what a mimic draws most in the mimicry bench
        decoded = poisoned_images(NS, enc, victims, anchors, dataclasses.replace(settings, floor=0.5,
                                                                                 decoded_weight=0.5),
                                  f"decoded-{tag}", pairing=pairing)
        print(f"poison ({args.preset}, decoded objective, floor 0.5): PSNR {float(decoded['psnr'].mean()):.2f} dB, "
              f"nearer {int(decoded['nearer'].sum())}/{k_max}, latent gain {float(decoded['gain'].mean()):.3f}",
              flush=True)
        read(decoded["images"], "decoded")
    noisy = noise_like(victims, poisons["psnr"])
    noiseobj = None
    if "noiseobj" in wanted:
        # Nightshade's second formulation against the clean model (seed 0) that drew the anchors, caption A
        predict, sigmas = M.noise_predictor(clean_models[seeds[0]][0], A, bf16)
        predictor = NS.NoisePredictor(predict, sigmas, latent_channels=32, name="the clean miniature model")
        noiseobj = poisoned_images(NS, enc, victims, anchors, settings, f"noiseobj-{tag}", "noise",
                                   predictor, pairing)
        print(f"poison ({args.preset}, noise objective): PSNR {float(noiseobj['psnr'].mean()):.2f} dB, nearer "
              f"{int(noiseobj['nearer'].sum())}/{k_max}, latent gain {float(noiseobj['gain'].mean()):.3f}",
              flush=True)
        read(noiseobj["images"], "noiseobj")
    if args.screen:
        return

    print(f"\n{'set':10} {'count':>5} {'seed':>4} {'A->B':>8} {'bleed':>8} {'collateral':>10}  own share per concept "
          f"({', '.join(CONCEPTS)})  A's samples classified as each  train s", flush=True)
    for seed in seeds:
        score("clean", 0, seed, *clean_models[seed])
    for c in counts:
        k = round(n_a * c / 100)
        for seed in seeds:
            if "poisoned" in wanted:
                score("poisoned", c, seed, *train_on(torch.cat([poisons["images"][:k], train_x[A][k:]]),
                                                     f"poisoned{c}-{tag}", seed))
            if decoded is not None:
                score("decoded", c, seed, *train_on(torch.cat([decoded["images"][:k], train_x[A][k:]]),
                                                    f"decoded{c}-{tag}", seed))
            if noiseobj is not None:
                score("noiseobj", c, seed, *train_on(torch.cat([noiseobj["images"][:k], train_x[A][k:]]),
                                                     f"noiseobj{c}-{tag}", seed))
            if "dirty" in wanted:
                score("dirty", c, seed, *train_on(torch.cat([spare_b[:k], train_x[A][k:]]), f"dirty{c}", seed))
        for seed in seeds[:1]:
            if ref is not None:
                score("reference", c, seed, *train_on(torch.cat([ref["images"][:k], train_x[A][k:]]),
                                                      f"reference{c}-{level}-{tag}", seed))
            if "noise" in wanted:
                score("noise", c, seed, *train_on(torch.cat([noisy[:k], train_x[A][k:]]), f"noise{c}", seed))
    print_summary(rows, seeds)


def steer(E, member, caps=(8, 32, 255), steps=(100, 300)):
    """An upper bound on any latent poison through ``member`` (TAEF2 unless asked): plain Adam on ||E(x+d) - E(a)||
    with only an L-inf cap (no EOT, no PSNR or SSIM floor, pixels clipped to 0..1), 8 images of each non-B concept
    toward 8 B images (pictures the bench never trains on); prints the latent gain 1 - d'/d and the PSNR."""
    target = images(CONCEPTS[B], 12, 1)[:8]
    za = BM.encode(member, target)
    print(f"{'concept':10} {'cap':>5} {'step':>5} {'gain':>7} {'PSNR':>6}", flush=True)
    for k, concept in enumerate(CONCEPTS):
        if k == B:
            continue
        x = images(concept, 0, 1)[:8]
        with torch.no_grad():
            d0 = (member(x) - za).flatten(1).norm(dim=1)
        for cap in caps:
            eps = cap / 255
            delta = torch.zeros_like(x, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=eps / 10 if cap < 255 else 0.01)
            with torch.inference_mode(False), torch.enable_grad():
                for it in range(1, max(steps) + 1):
                    xp = (x + delta.clamp(-eps, eps)).clamp(0, 1)
                    dist = (member(xp) - za).flatten(1).norm(dim=1)
                    opt.zero_grad()
                    dist.sum().backward()
                    opt.step()
                    if it in steps:
                        psnr = float(E.psnr(xp.detach(), x).mean())
                        gain = float(E.target_gain(d0, dist.detach()).mean())
                        print(f"{concept:10} {cap:>5} {it:>5} {gain:7.3f} {psnr:6.1f}", flush=True)


def _by_concept(pics: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
    return [pics[ys == k] for k in range(len(CONCEPTS))]


def print_summary(rows, seeds):
    """Per set and count: the mean A->B rate over its seeds and its spread (largest minus smallest)."""
    print("\n== summary: A->B rate, mean over seeds (spread = max - min); bleed and collateral the same way ==")
    groups = {}
    for label, count, seed, ab, bleed, coll, _ in rows:
        groups.setdefault((label, count), []).append((ab, bleed, coll))
    for (label, count), vals in groups.items():
        cols = list(zip(*vals))
        text = ", ".join(f"{name} {sum(v) / len(v):.3f} (spread {max(v) - min(v):.3f})"
                         for name, v in zip(("A->B", "bleed", "collateral"), cols))
        print(f"{label:10} {count:>3}%  n={len(vals)}  {text}", flush=True)


if __name__ == "__main__":
    main()
