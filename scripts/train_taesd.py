"""Train the pack's tiny TAESD-format demo/test autoencoder, deterministically, on CPU.

The model is ComfyUI's own ``comfy.taesd.taesd`` ``Encoder(4)`` / ``Decoder(4)`` pair, trained from
scratch as a plain autoencoder (pixels in [0, 1] -> 4-channel latent at 1/8 resolution -> pixels) on
the photos bundled with scikit-image (no download). The result is saved in the exact files ComfyUI's
``VAELoader`` loads as "taesd" (``vae_approx/taesd_{encoder,decoder}.safetensors``). It is a small
demo and test fixture, NOT Stable Diffusion's TAESD.

    .host/venv/bin/python scripts/train_taesd.py            # train, write models/taesd/*
    .host/venv/bin/python scripts/train_taesd.py --verify   # round trip through nodes.VAELoader

Needs the ComfyUI host built by ``scripts/setup_host.sh`` (``.host/ComfyUI`` and ``.host/venv``).
Runs on one torch thread: on a shared 2-core machine two OpenMP threads were 2-3x slower (barrier
spinning), and a fixed thread count keeps the result bit-for-bit repeatable. ~11 minutes.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".host", "ComfyUI")
OUT_DIR = os.path.join(ROOT, "models", "taesd")
sys.path.insert(0, HOST)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
from comfy.taesd.taesd import Block, Decoder, Encoder  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

SEED = 20240611
STEPS = 1400
BATCH = 4
CROPS = (32, 48, 64)
LR = 2e-3
CLIP = 1.0
THREADS = 1  # see the docstring
EVAL_TRAIN_CROP = 256  # training images are scored on a centre crop (CPU time)
CL = torch.channels_last  # ~1.5x faster convolutions on CPU
HELD_OUT = ("coffee", "rocket")
TRAIN_COLOUR = ("astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "colorwheel",
                "retina", "motorcycle_left", "motorcycle_right", "logo")
TRAIN_GREY = ("camera", "brick", "grass", "gravel", "moon", "text", "coins", "page", "clock")


def load_image(name):
    """One scikit-image sample as float32 HWC RGB in [0, 1]; greyscale is replicated to RGB."""
    import skimage.data as data
    if name.startswith("motorcycle_"):
        im = data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        im = getattr(data, name)()
    im = im.astype(np.float32) / 255.0
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    if im.shape[2] == 4:  # logo: composite onto white
        im = im[:, :, :3] * im[:, :, 3:] + (1.0 - im[:, :, 3:])
    return np.ascontiguousarray(im)


def init_weights(model, gen):
    """ComfyUI's disable_weight_init layers are left uninitialised: set every conv explicitly."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
    for m in model.modules():  # keep the residual stack near identity at the start
        if isinstance(m, Block):
            with torch.no_grad():
                m.conv[-1].weight.mul_(0.1)
    return model


def build(seed=SEED):
    gen = torch.Generator().manual_seed(seed)
    return init_weights(Encoder(4), gen), init_weights(Decoder(4), gen)


def sample_batch(rng, images, weights, size):
    """Deterministic random crops (numpy RandomState), flips, and mild colour jitter -> NCHW."""
    out = np.empty((BATCH, 3, size, size), np.float32)
    for i in range(BATCH):
        im = images[rng.choice(len(images), p=weights)]
        y = rng.randint(0, im.shape[0] - size + 1)
        x = rng.randint(0, im.shape[1] - size + 1)
        c = im[y:y + size, x:x + size]
        if rng.rand() < 0.5:
            c = c[:, ::-1]
        if rng.rand() < 0.2:
            c = c[::-1]
        gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
        c = c * gain * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        out[i] = np.clip(c, 0.0, 1.0).transpose(2, 0, 1)
    return torch.from_numpy(out).contiguous(memory_format=CL)


def grad_loss(a, b):
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def psnr(a, b):
    mse = float(((a.detach().clamp(0, 1) - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def to_tensor(im, crop=None):
    """Whole image cropped to a multiple of 8 (or a centre crop of side <= crop) as 1CHW."""
    h, w = im.shape[0] // 8 * 8, im.shape[1] // 8 * 8
    y = x = 0
    if crop:
        y, x, h, w = (h - min(h, crop)) // 2, (w - min(w, crop)) // 2, min(h, crop), min(w, crop)
    return torch.from_numpy(im[y:y + h, x:x + w].transpose(2, 0, 1).copy())[None]


@torch.no_grad()
def evaluate(enc, dec, names, crop=None):
    res = {}
    for n in names:
        x = to_tensor(load_image(n), crop).contiguous(memory_format=CL)
        z = enc(x)
        res[n] = {"hw": list(x.shape[2:]), "psnr": round(psnr(dec(z), x), 3),
                  "latent_absmax": round(float(z.abs().max()), 3), "latent_std": round(float(z.std()), 3)}
    return res


def train(steps):
    torch.manual_seed(SEED)
    torch.set_flush_denormal(True)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    rng = np.random.RandomState(SEED)
    names = TRAIN_COLOUR + TRAIN_GREY
    images = [load_image(n) for n in names]
    weights = np.array([2.0 if n in TRAIN_COLOUR else 1.0 for n in names])
    weights /= weights.sum()
    enc, dec = build()
    enc.to(memory_format=CL)
    dec.to(memory_format=CL)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    warm = min(50, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm)
                                              * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    t0, c0, hist = time.time(), time.process_time(), []
    for step in range(steps):
        x = sample_batch(rng, images, weights, CROPS[rng.randint(len(CROPS))])
        z = enc(x)
        y = dec(z)
        rec = F.mse_loss(y, x)
        loss = rec + 0.5 * F.l1_loss(y, x) + 0.5 * grad_loss(y, x)
        loss = loss + 0.1 * F.relu(z.abs() - 2.5).pow(2).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        hist.append(rec.item())
        if (step + 1) % 50 == 0 or step == 0:
            m = sum(hist[-50:]) / len(hist[-50:])
            print(f"step {step + 1}/{steps}  crop psnr {10 * math.log10(1 / m):.2f} dB  "
                  f"|z|max {z.detach().abs().max().item():.2f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"gn {gnorm.item():.2f}  "
                  f"{time.time() - t0:.0f}s", flush=True)
    return enc, dec, time.time() - t0, time.process_time() - c0


def set_out(path):
    global OUT_DIR
    OUT_DIR = os.path.abspath(path)


def save(enc, dec):
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, m in (("taesd_encoder", enc), ("taesd_decoder", dec)):
        sd = {k: v.detach().to(torch.float16).contiguous() for k, v in m.state_dict().items()}
        save_file(sd, os.path.join(OUT_DIR, name + ".safetensors"))


def load_saved():
    """The saved fp16 weights back into fp32 modules (what the metrics are measured on)."""
    enc, dec = Encoder(4), Decoder(4)
    for name, m in (("taesd_encoder", enc), ("taesd_decoder", dec)):
        sd = load_file(os.path.join(OUT_DIR, name + ".safetensors"))
        m.load_state_dict({k: v.float() for k, v in sd.items()})
    return enc.eval().to(memory_format=CL), dec.eval().to(memory_format=CL)


def verify(name=HELD_OUT[0]):
    """Round trip a held-out image through ComfyUI's own VAELoader("taesd") encode/decode."""
    dst = os.path.join(HOST, "models", "vae_approx")
    os.makedirs(dst, exist_ok=True)
    for f in ("taesd_encoder.safetensors", "taesd_decoder.safetensors"):
        shutil.copyfile(os.path.join(OUT_DIR, f), os.path.join(dst, f))
    import nodes
    vae = nodes.VAELoader().load_vae("taesd")[0]
    x = to_tensor(load_image(name))
    img = x.permute(0, 2, 3, 1)  # BHWC in [0, 1]
    latent = vae.encode(img)
    out = vae.decode(latent)
    p = psnr(out.float(), img)
    torch.set_num_threads(THREADS)
    ref = evaluate(*load_saved(), [name])[name]["psnr"]
    print(f"ComfyUI VAELoader('taesd') round trip on {name} {tuple(img.shape)}: latent {tuple(latent.shape)} "
          f"std {float(latent.std()):.3f}, PSNR {p:.3f} dB (vae dtype {vae.vae_dtype}); this script's own "
          f"encoder/decoder: {ref:.3f} dB")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=OUT_DIR, help="where to write/read the weights and metrics")
    ap.add_argument("--verify", action="store_true", help="only check the saved files load in ComfyUI")
    args = ap.parse_args()
    set_out(args.out)
    if args.verify:
        verify()
        return
    t_start = time.time()
    enc, dec, secs, cpu = train(args.steps)
    save(enc, dec)
    torch.set_num_threads(THREADS)
    enc, dec = load_saved()
    metrics = {
        "seed": SEED, "steps": args.steps, "batch": BATCH, "crops": list(CROPS), "lr": LR,
        "train_seconds": round(secs, 1),
        "train_cpu_seconds": round(cpu, 1),
        "threads": THREADS, "torch": torch.__version__, "weights_dtype": "float16",
        "train_eval_crop": EVAL_TRAIN_CROP, "held_out": evaluate(enc, dec, HELD_OUT),
        "train": evaluate(enc, dec, TRAIN_COLOUR + TRAIN_GREY, EVAL_TRAIN_CROP),
    }
    for k in ("held_out", "train"):
        metrics[f"{k}_mean_psnr"] = round(float(np.mean([v["psnr"] for v in metrics[k].values()])), 3)
    metrics["total_seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(OUT_DIR, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps({k: v for k, v in metrics.items() if "psnr" in k}), f"train {secs:.0f}s")


if __name__ == "__main__":
    main()
