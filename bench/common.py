"""Shared set-up for the benchmarks: the ComfyUI host in-process, the models, real test images.

Benchmarks run in the host venv: ``.host/venv/bin/python bench/<script>.py`` after ``bash scripts/setup_host.sh``.
"""
from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".host", "ComfyUI")


def load_host():
    """Import ComfyUI (CPU unless a GPU is present) and the pack as ComfyUI loads it; returns the pack module."""
    if not os.path.isdir(HOST):
        sys.exit("no ComfyUI host: run bash scripts/setup_host.sh first")
    sys.path.insert(0, HOST)
    import comfy.cli_args
    import torch
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    if "ComfyUI-Cloak" in sys.modules:
        return sys.modules["ComfyUI-Cloak"]
    spec = importlib.util.spec_from_file_location("ComfyUI-Cloak", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["ComfyUI-Cloak"] = pack
    spec.loader.exec_module(pack)
    return pack


def shared_models_dir() -> str:
    """Where the real pretrained encoders live (DESIGN.md §5): $CLOAK_MODELS_DIR or ../shared/models."""
    return os.environ.get("CLOAK_MODELS_DIR") or os.path.join(ROOT, "..", "shared", "models")


def tae_path(name: str) -> str | None:
    """``taef2_encoder.pth`` etc. in the shared models folder, or None when absent."""
    folder = name.split("_")[0]
    path = os.path.join(shared_models_dir(), folder, name)
    return path if os.path.isfile(path) else None


def tae(name: str = "taef2"):
    """A real pretrained TAE encoder from the shared folder (engine.tae_encoder), or exit with the reason."""
    E = load_host().engine
    path = tae_path(f"{name}_encoder.pth")
    if path is None:
        sys.exit(f"{name} weights not found in {shared_models_dir()} (set CLOAK_MODELS_DIR)")
    import torch
    return E.tae_encoder(path, "cuda" if torch.cuda.is_available() else "cpu")


def taesd_vae():
    """The TAESD trained in this repository, through ComfyUI's own VAELoader ("taesd")."""
    import nodes
    return nodes.VAELoader().load_vae("taesd")[0]


def photos(size: int, count: int):
    """``count`` real photos as ``[N, 3, size, size]`` crops (scikit-image's bundled photos held out from the
    TAESD's training: coffee and rocket; then others), deterministic."""
    import numpy as np
    import skimage.data
    import skimage.transform
    import torch
    sources = ["coffee", "rocket", "chelsea", "astronaut", "immunohistochemistry", "colorwheel"]
    out = []
    for name in sources:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[:2]
        side = min(h, w)
        for off in (0, w - side) if w > side else (0,):
            crop = img[(h - side) // 2:(h - side) // 2 + side, off:off + side]
            crop = skimage.transform.resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
            out.append(np.round(crop).astype(np.uint8))
            if len(out) == count:
                arr = np.stack(out).astype(np.float32) / 255.0
                return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"only {len(out)} photos available, asked for {count}")


def stylise(x):
    """A deterministic stand-in for Glaze's style transfer Ω(x, T) (no SD img2img here): flattened colour
    regions, dark edges and a warm palette shift, i.e. a "poster / comic" style of the same picture."""
    import kornia
    import torch
    smooth = kornia.filters.bilateral_blur(x, (9, 9), 0.1, (3.0, 3.0))
    poster = torch.round(smooth * 4) / 4
    edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(x)).clamp(0, 0.25) * 4
    warm = poster * torch.tensor([1.1, 0.95, 0.75]).view(1, 3, 1, 1)
    return (warm * (1 - 0.8 * edges)).clamp(0, 1)


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak on GPU, sampled RSS on CPU (MiB)."""

    def __init__(self, device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back so the RSS peak reflects this run
        self._base = _rss()
        self._peak = self._base
        self._run = True
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while self._run:
            self._peak = max(self._peak, _rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        import torch
        if self.device.type == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._run = False
            self._t.join()
            self.peak_mib = (self._peak - self._base) / 2**20
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def match_psnr(run_at, psnr_goal: float, tol: float = 0.5, tries: int = 5):
    """Pick the reference loop's L∞ bound, on the 8-bit grid k/255, whose PSNR is nearest ``psnr_goal``.

    ``run_at(eps) -> (result, ...)`` with ``result["psnr"]``. The reference's output is rounded to 8-bit
    levels inside its box, so any ε in [k, k+1)/255 gives the same image: only whole levels are tried,
    starting from the level the PSNR formula suggests and stepping toward the goal. Returns
    ``(eps, run_at's answer)`` of the closest try (its PSNR may differ from the goal by up to half a level's
    spacing, about 1 dB near 35 dB; the benches print both PSNRs).
    """
    tried = {}
    k = max(1, round(255 * 10 ** (-psnr_goal / 20)))
    for _ in range(tries):
        if k in tried or k < 1:
            break
        out = run_at(k / 255)
        tried[k] = out
        psnr = out[0]["psnr"]
        if abs(psnr - psnr_goal) <= tol:
            break
        k = k + 1 if psnr > psnr_goal else k - 1
    best = min(tried, key=lambda j: abs(tried[j][0]["psnr"] - psnr_goal))
    return best / 255, tried[best]
