"""Train the pack's generic miniature purifiers: miniature latent diffusion models (engine/miniature.py) over a
TAE's latents, trained on clean images that are none of the mimicry bench's artists, so that RobustnessCheck's
DiffPure and noisy-upscaling rows run on a CPU with no diffusion checkpoint (issue 16).

Data: 128² crops of scikit-image photos the bench's photo and painting artists do not use (hubble_deep_field,
retina, and the grey camera/moon/grass/gravel/brick as colour), and of bench/devset.py's generators (flat colour,
line art, flat scenes) at seeds the bench's artists do not use; random horizontal flips. Deterministic.

    .host/venv/bin/python scripts/train_purifier.py              # both: taef2 (from ../shared/models), taesd
    .host/venv/bin/python scripts/train_purifier.py --tae taesd

Writes ``models/miniature/purifier_<tae>.safetensors`` (float16 weights, < 10 MB; the metadata names the TAE, its
latent channels and the training data's hash). A weak purifier next to SD's: a 2-level UNet of a few million
parameters trained for minutes on a few hundred crops, where DiffPure's published runs use a model trained on
billions of images; it removes what a denoiser of local texture removes, no more.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import common  # noqa: E402
import devset  # noqa: E402

OUT_DIR = os.path.join(ROOT, "models", "miniature")
PHOTOS = ("hubble_deep_field", "retina", "camera", "moon", "grass", "gravel", "brick")
CROP, STRIDE = 128, 96
# per TAE: the network width and the training steps (TAEF2's 32 channels need the wider model)
PLANS = {"taef2": dict(width=64, steps=2000), "taesd": dict(width=32, steps=1500)}


def sources() -> list[np.ndarray]:
    """The purifier's training pictures, ``[H, W, 3]`` float32 0..1."""
    import skimage.data
    import skimage.transform
    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
        scale = 512 / max(img.shape[:2])
        if scale < 1:
            img = skimage.transform.resize(img, (round(img.shape[0] * scale), round(img.shape[1] * scale)),
                                           anti_aliasing=True, preserve_range=True)
        out.append(np.asarray(img, dtype=np.float32) / 255)
    for i in range(6):
        out += [devset._flat(256, 9000 + i), devset._lineart(256, 9100 + i), devset._flat_scene(256, 9200 + i)]
    return out


def crops(images: list[np.ndarray]) -> torch.Tensor:
    tiles = []
    for img in images:
        h, w = img.shape[:2]
        for y in range(0, h - CROP + 1, STRIDE):
            for x in range(0, w - CROP + 1, STRIDE):
                tiles.append(img[y:y + CROP, x:x + CROP])
    x = torch.from_numpy(np.round(np.stack(tiles) * 255) / 255).float().permute(0, 3, 1, 2)
    return x.contiguous()


def encoder_for(name: str):
    E = common.load_host().engine
    if name == "taesd":
        return E.tae_encoder(os.path.join(ROOT, "models", "taesd", "taesd_encoder.safetensors"), "cpu")
    return common.tae(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tae", default="taef2,taesd")
    ap.add_argument("--steps", type=int, default=0, help="override the plan's training steps (0: the plan's)")
    args = ap.parse_args()
    common.load_host()
    from importlib import import_module
    M = import_module("ComfyUI-Cloak.engine.miniature")
    P = import_module("ComfyUI-Cloak.engine.purifier")
    x = crops(sources())
    print(f"{x.shape[0]} crops of {CROP}²", flush=True)
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in args.tae.split(","):
        member = encoder_for(name)
        z = M.in_chunks(member, x)
        plan = PLANS[name]
        config = M.MiniConfig(channels=z.shape[1], width=plan["width"], noise_shift=0.5)
        settings = M.TrainSettings(steps=args.steps or plan["steps"], batch=32, seed=0, bf16=True)
        start = time.perf_counter()
        model = M.train(z, None, config, settings,
                        on_step=lambda i, n, loss: print(f"  {name} step {i}/{n} loss {loss:.4f}", flush=True)
                        if i % 250 == 0 else None)
        path = os.path.join(OUT_DIR, f"purifier_{name}.safetensors")
        M.save(model, path, half=True, tae=name, latent_channels=str(z.shape[1]),
               data_sha1=hashlib.sha1(x.numpy().tobytes()).hexdigest()[:16], crops=str(x.shape[0]),
               settings=repr(settings), **P.fingerprint_metadata(member))
        print(f"{name}: {z.shape[0]} latents {list(z.shape[1:])}, trained in {time.perf_counter() - start:.0f} s, "
              f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path) / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
