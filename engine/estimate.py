"""Up-front cost of a cloak: memory and time, estimated before any work, so a job that cannot fit is
refused with a clear message instead of running for minutes and failing (or swapping the machine to a halt).

How: one forward + backward pass of the encoder(s) on a small probe image counts the bytes autograd keeps
for the backward pass (the activations, which is what grows with the image) and times it. Both scale with the
number of pixels, so they are measured per pixel and multiplied out for the real image, its padding, the EOT
draws per step (each keeps its own graph until the gradient is taken) and the steps. Pure torch.

The refusal rule is one function, :func:`fits_in_memory`, so that tiling (which bounds the pixels per pass)
can later relax it in one place.
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

    def describe(self) -> str:
        return (f"estimated peak memory {self.peak_bytes / 2**30:.2f} GiB, time {format_seconds(self.seconds)} "
                f"({self.images} image(s) of {self.pixels / 1e6:.2f} MP padded, {self.steps} steps, "
                f"{self.passes_per_step} encoder pass(es) per step)")


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


_PROBES: dict[tuple, Probe] = {}  # by encoder name (weights fingerprint), device, dtype and probe size


def probe(encoder, side: int = PROBE_SIDE) -> Probe:
    """Measure ``encoder`` (an EncoderEnsemble) on a grey ``side``² probe (at least its ``min_size``); measured
    once per encoder, device and precision (the cost per pixel does not change between runs)."""
    m = max(1, int(encoder.multiple))
    side = max(int(side), int(encoder.min_size))
    side = -(-side // m) * m
    device = encoder.members[0].device
    key = (encoder.name, str(device), tuple(str(getattr(x, "dtype", "")) for x in encoder.members), side)
    if key not in _PROBES:
        _PROBES[key] = _measure(encoder, side, device)
    return _PROBES[key]


def _measure(encoder, side: int, device) -> Probe:
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
                total = sum(m_(x).float().pow(2).mean() for m_ in encoder.members)
            torch.autograd.grad(total, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    pixels = side * side
    return Probe(sum(seen.values()) / pixels, seconds / pixels)


def estimate_cost(probed: Probe, height: int, width: int, images: int, steps: int, multiple: int = 8,
                  eot_samples: int = 1, clean_pass: bool = False) -> CostEstimate:
    """The cost of cloaking ``images`` images of ``height``×``width`` for ``steps`` steps (images are cloaked one
    at a time, so memory does not grow with the batch; time does)."""
    m = max(1, int(multiple))
    pixels = (-(-int(height) // m) * m) * (-(-int(width) // m) * m)
    passes = max(1, int(eot_samples)) + (1 if clean_pass else 0)
    peak = (probed.bytes_per_pixel * passes + PIXEL_STATE_BYTES) * pixels * OVERHEAD
    seconds = probed.seconds_per_pixel * pixels * passes * int(steps) * int(images)
    return CostEstimate(peak, seconds, pixels, int(images), int(steps), passes)


def fits_in_memory(estimate: CostEstimate, free_bytes: float) -> bool:
    """Whether a job fits: the one rule a tiled cloak will relax later."""
    return estimate.peak_bytes <= HEADROOM * float(free_bytes)


def refusal_message(estimate: CostEstimate, free_bytes: float, height: int, width: int) -> str:
    """What to tell a user whose image does not fit, with the largest square that would."""
    per_pixel = estimate.peak_bytes / max(1, estimate.pixels)
    side = int((HEADROOM * float(free_bytes) / max(per_pixel, 1e-9)) ** 0.5)
    return (f"image: {width}x{height} does not fit in memory: {estimate.describe()}, but only "
            f"{free_bytes / 2**30:.2f} GiB is free. Scale it down (about {side}x{side} px fits here; e.g. with "
            "Upscale Image By 0.5), choose robustness off (fewer passes per step), or use a machine with more "
            "memory")


__all__ = ["Probe", "CostEstimate", "probe", "estimate_cost", "fits_in_memory", "refusal_message",
           "format_seconds"]
