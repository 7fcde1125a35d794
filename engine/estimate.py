"""Up-front cost of a cloak: memory and time, estimated before any work, so a job that cannot fit is
refused with a clear message instead of running for minutes and failing (or swapping the machine to a halt).

How: one forward + backward pass of the encoder(s) on a small probe image counts the bytes autograd keeps
for the backward pass (the activations, which is what grows with the image) and times it. Both scale with the
number of pixels, so they are measured per pixel and multiplied out for the real image, its padding, the EOT
draws per step (each keeps its own graph until the gradient is taken) and the steps. Pure torch.

Tiling (engine.tiling) bounds the pixels per pass: :func:`max_tile_side` is the largest tile the free memory
allows, and a job is refused (:func:`fits_in_memory`) only when not even a small tile fits beside the whole
image's own tensors (the perturbation and its optimiser state).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

PROBE_SIDE = 64          # pixels per side of the probe image (rounded up to the encoder's multiple)
OVERHEAD = 1.3           # the transforms' and the optimiser's own tensors, allocator slack
PIXEL_STATE_BYTES = 96   # per pixel: x, δ, momentum, caps, the padded view and the 8-bit copy (float32)
HEADROOM = 0.9           # use at most this share of the free memory


@dataclass(frozen=True)
class Probe:
    """What one forward+backward pass costs per pixel: ``bytes_per_pixel`` kept for backward,
    ``seconds_per_pixel`` of compute (all ensemble members together)."""

    bytes_per_pixel: float
    seconds_per_pixel: float


@dataclass(frozen=True)
class CostEstimate:
    """Estimated peak extra memory (bytes) and total seconds of a cloak job."""

    peak_bytes: float
    seconds: float
    pixels: int          # padded pixels per image
    images: int
    steps: int
    passes_per_step: int
    tiles: int = 1       # tiles per image (1: the whole image in one pass)

    def describe(self) -> str:
        tiled = f", in {self.tiles} tiles" if self.tiles > 1 else ""
        return (f"estimated peak memory {self.peak_bytes / 2**30:.2f} GiB, time {format_seconds(self.seconds)} "
                f"({self.images} image(s) of {self.pixels / 1e6:.2f} MP padded{tiled}, {self.steps} steps, "
                f"{self.passes_per_step} encoder pass(es) per step)")


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


_PROBES: dict[tuple, Probe] = {}  # by encoder name (weights fingerprint), device, dtype and probe size


def probe(encoder, side: int = PROBE_SIDE, precision: str = "fp32") -> Probe:
    """Measure ``encoder`` (an EncoderEnsemble) on a grey ``side``² probe (at least its ``min_size``), its passes
    in ``precision`` (engine.precision); measured once per encoder, device and precision (the cost per pixel does
    not change between runs)."""
    from .precision import autocast_members
    m = max(1, int(encoder.multiple))
    side = max(int(side), int(encoder.min_size))
    side = -(-side // m) * m
    device = encoder.members[0].device
    members = autocast_members(encoder.members, precision, device)
    key = (encoder.name, str(device), tuple(str(getattr(x, "dtype", "")) for x in encoder.members), side,
           str(getattr(members[0], "autocast_dtype", "fp32")))
    if key not in _PROBES:
        _PROBES[key] = _measure(members, side, device)
    return _PROBES[key]


def _measure(members, side: int, device) -> Probe:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            seen[id(t)] = t.numel() * t.element_size()
        return t

    seconds = 0.0
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.full((1, 3, side, side), 0.5, device=device, requires_grad=True)
        for attempt in range(2):  # the first pass pays one-off costs (allocations, kernel choice): time the second
            start = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack if attempt == 0 else (lambda t: t), lambda t: t):
                total = sum(m_(x).float().pow(2).mean() for m_ in members)
            torch.autograd.grad(total, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    pixels = side * side
    return Probe(sum(seen.values()) / pixels, seconds / pixels)


def estimate_cost(probed: Probe, height: int, width: int, images: int, steps: int, multiple: int = 8,
                  eot_samples: int = 1, clean_pass: bool = False, tile: int = 0,
                  margin: int = 0) -> CostEstimate:
    """The cost of cloaking ``images`` images of ``height``×``width`` for ``steps`` steps (images are cloaked one
    at a time, so memory does not grow with the batch; time does). ``tile`` > 0: in tiles of about that side with
    ``margin`` px of context (engine.tiling)."""
    from .tiling import plan_tiles
    m = max(1, int(multiple))
    ph, pw = -(-int(height) // m) * m, -(-int(width) // m) * m
    pixels = ph * pw
    passes = max(1, int(eot_samples)) + (1 if clean_pass else 0)
    tiles = plan_tiles(ph, pw, tile, margin, m) if tile and pixels > tile * tile else []
    pass_pixels = max((t.crop_pixels for t in tiles), default=pixels)
    work_pixels = sum(t.crop_pixels for t in tiles) or pixels
    peak = (probed.bytes_per_pixel * passes * pass_pixels + PIXEL_STATE_BYTES * pixels) * OVERHEAD
    seconds = probed.seconds_per_pixel * work_pixels * passes * int(steps) * int(images)
    return CostEstimate(peak, seconds, pixels, int(images), int(steps), passes, max(1, len(tiles)))


def max_tile_side(probed: Probe, height: int, width: int, free_bytes: float, eot_samples: int = 1,
                  clean_pass: bool = False, margin: int = 0, multiple: int = 8) -> int:
    """The largest tile side (a multiple of ``multiple``, at most the image's longer side) whose pass fits in
    ``free_bytes`` beside the whole image's own tensors; 0 when not even a 64 px tile fits."""
    passes = max(1, int(eot_samples)) + (1 if clean_pass else 0)
    room = HEADROOM * float(free_bytes) / OVERHEAD - PIXEL_STATE_BYTES * int(height) * int(width)
    if room <= 0:
        return 0
    crop = (room / max(probed.bytes_per_pixel * passes, 1e-9)) ** 0.5
    if crop * crop >= int(height) * int(width):
        return max(int(height), int(width))  # the whole image fits in one pass
    side = int(crop) - 2 * int(margin)
    side = side // max(1, int(multiple)) * max(1, int(multiple))
    return side if side >= 64 else 0


def fits_in_memory(estimate: CostEstimate, free_bytes: float) -> bool:
    """Whether a job fits in ``free_bytes`` (a tiled job's estimate counts one tile's pass)."""
    return estimate.peak_bytes <= HEADROOM * float(free_bytes)


def refusal_message(estimate: CostEstimate, free_bytes: float, height: int, width: int) -> str:
    """What to tell a user whose image does not fit, with the largest square that would."""
    per_pixel = estimate.peak_bytes / max(1, estimate.pixels)
    side = int((HEADROOM * float(free_bytes) / max(per_pixel, 1e-9)) ** 0.5)
    return (f"image: {width}x{height} does not fit in memory: {estimate.describe()}, but only "
            f"{free_bytes / 2**30:.2f} GiB is free. Scale it down (about {side}x{side} px fits here; e.g. with "
            "Upscale Image By 0.5), set a smaller tile_size, choose robustness off (fewer passes per step), or use "
            "a machine with more memory")


__all__ = ["Probe", "CostEstimate", "probe", "estimate_cost", "max_tile_side", "fits_in_memory", "refusal_message",
           "format_seconds"]
