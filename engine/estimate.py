"""Up-front cost of a cloak: memory and time, estimated before any work, so a job that cannot fit is
refused with a clear message instead of running for minutes and failing (or swapping the machine to a halt).

How: one forward + backward pass of the encoder(s) on a small probe image counts the bytes autograd keeps
for the backward pass (the activations, which is what grows with the image), and a pass on a larger one is
timed. Both scale with the number of pixels, so they are measured per pixel and multiplied out for the real
image, its padding, its tiles' margins, the EOT draws per step (each keeps its own graph until the gradient is
taken) and the steps. Pure torch.

The time is calibrated on TAEF2 (bench/bench_scale.py --sections estimate, 2 CPU cores, bf16): a 64² pass costs
2.3x as much per pixel as a 256² one and misled the estimate (1.8x too long at 512²), so time is probed at 256²,
where the cost per pixel is that of a 512² pass. A step with robustness on costs its encoder passes, plus the
decode→encode round-trip draws (``roundtrip_p`` of the draws, each about one more pass), plus the step's own work
(the EOT transform, the decoded target's statistics, the projection and its floors): about a quarter of a TAE's
pass, nothing beside a full VAE's (measured 2026-12-07 at 1 thread: TAEF2 at 256² 1.23 passes a step without round
trips, 1.42 with; an SD3-shaped VAE with its decoder at 192² 0.95 without, where the old flat 1.5x overcharged full
VAEs by 1.3-1.6x). Calibration, the report and the SSIM/PSNR floors cost about two steps more.

Tiling (engine.tiling) bounds the pixels per pass: :func:`max_tile_side` is the largest tile the free memory
allows, and a job is refused (:func:`fits_in_memory`) only when not even a small tile fits beside the whole
image's own tensors (the perturbation and its optimiser state).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

PROBE_SIDE = 64          # pixels per side of the memory probe image (rounded up to the encoder's multiple)
TIME_PROBE_SIDE = 256    # ... and of the timed one (a 64² pass costs 2.3x as much per pixel: see above)
PROBE_SECONDS = 2.0      # a model whose pass there would take longer than this is timed on the memory probe's
#                          side instead (a full VAE with its decoder on a CPU: its cost per pixel hardly depends
#                          on the side, and minutes of probing would precede every job)
OVERHEAD = 1.3           # the transforms' and the optimiser's own tensors, allocator slack
# a step's own work (EOT transform, decoded target statistics, projection), in passes of a light encoder (a TAE,
# whose passes are timed on the 256² probe); a slow one's pass (a full VAE on a CPU) dwarfs it (see above)
STEP_WORK_PASSES = 0.25
FIXED_STEPS = 2          # calibration, the report and the floors, in steps' worth of passes
PIXEL_STATE_BYTES = 96   # per pixel: x, δ, momentum, caps, the padded view and the 8-bit copy (float32)
# per pixel, what the visibility term at full resolution (1 - HaarPSI of the whole image, forward and backward) holds
# on top: piq's HaarPSI of a 2048² / 4096² picture peaked 1.72 / 6.40 GiB over the picture alone (441 / 411 B a pixel,
# 2026-12-08): at 4096² the largest part of a default cloak's 8.61 GiB peak, so the estimate counts it
FULL_VISIBILITY_BYTES = 440
# per pixel of every image of the batch, held for the whole job: the engine's copy of the input, the cloaked
# copy, ComfyUI's output IMAGE and the perturbation preview (float32, 3-4 channels each)
BATCH_BYTES_PER_PIXEL = 60
HEADROOM = 0.9           # use at most this share of the free memory


@dataclass(frozen=True)
class Probe:
    """What one forward+backward pass costs per pixel: ``bytes_per_pixel`` kept for backward,
    ``seconds_per_pixel`` of compute (all ensemble members together); ``slow``: a pass so dear (a full VAE with
    its decoder on a CPU) that it was timed on the small probe and the step's own work is nothing beside it."""

    bytes_per_pixel: float
    seconds_per_pixel: float
    slow: bool = False


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
    batch_bytes: float = 0.0  # what the whole batch holds (in peak_bytes when it shares the device's memory)

    def describe(self) -> str:
        tiled = f", in {self.tiles} tiles" if self.tiles > 1 else ""
        return (f"estimated peak memory {self.peak_bytes / 2**30:.2f} GiB, time {format_seconds(self.seconds)} "
                f"({self.images} image(s) of {self.pixels / 1e6:.2f} MP padded{tiled}, {self.steps} steps, "
                f"{self.passes_per_step} encoder pass(es) per step)")


LONG_JOB_SECONDS = 1800  # an estimate over this gets the advice below (a full VAE's decoder on a CPU, a huge image)


def long_job_advice(estimate: "CostEstimate", decoded: bool) -> str | None:
    """What to do about a job estimated to take longer than LONG_JOB_SECONDS (None when it does not)."""
    if estimate.seconds <= LONG_JOB_SECONDS:
        return None
    ways = ["wire the model family's tiny autoencoder (tae_name, e.g. taesd for SD1.x, taef1 for FLUX.1) instead "
            "of the full VAE", "render_quality faster", "a smaller image"]
    if decoded:
        ways.insert(1, "decoded_objective off (the decoder is most of the cost; a weaker cloak)")
    return (f"long job: about {format_seconds(estimate.seconds)} on this device; to go faster: "
            + "; ".join(ways) + ". Cancel stops it at the next step")


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


@dataclass(frozen=True)
class Passes:
    """The encoder passes one optimisation step makes: ``eot_samples`` drawn transforms (``eot``; without it the
    image as it is), plus one on the untouched image when ``clean_pass``; each over the whole image, or in tiles of
    about ``tile`` px a side with ``margin`` px of context (``tile`` 0: whole)."""

    eot_samples: int = 1
    clean_pass: bool = False
    tile: int = 0
    margin: int = 0
    eot: bool = True  # transforms are drawn (robustness on/strong); False: robustness off
    roundtrip: float = 0.0  # share of the draws that are a round trip through the encoder's decoder (one pass more)
    full_visibility: bool = False  # the loss charges 1 - HaarPSI of the whole image every step (FULL_VISIBILITY_BYTES)

    @property
    def per_step(self) -> int:
        return max(1, int(self.eot_samples)) + (1 if self.clean_pass else 0)


def state_bytes(passes: Passes) -> int:
    """Bytes per pixel of the whole image a step holds whatever its tiles: the image's own tensors and, with the
    visibility term at full resolution, HaarPSI's forward and backward."""
    return PIXEL_STATE_BYTES + (FULL_VISIBILITY_BYTES if passes.full_visibility else 0)


_PROBES: dict[tuple, Probe] = {}  # by encoder name (weights fingerprint), device, dtype and probe size


def probe(encoder, side: int = PROBE_SIDE, precision: str = "fp32", time_side: int = TIME_PROBE_SIDE,
          decoded: bool = False, styled: bool = False) -> Probe:
    """Measure ``encoder`` (an EncoderEnsemble): the bytes kept for backward on a grey ``side``² probe, the time of
    a pass on a ``time_side``² one (both at least its ``min_size``), its passes in ``precision``
    (engine.precision); measured once per encoder, device and precision (the cost per pixel does not change
    between runs). ``decoded``: each pass also decodes the latent (the decoded objective,
    engine.objectives.DecodedLatentMatch), for members that carry their decoder; ``styled``: and runs the encoder's
    style layers on the decoded picture (its ``style`` term), for members that have them."""
    from .precision import autocast_members, resolve
    m = max(1, int(encoder.multiple))
    side, time_side = (-(-max(int(s_), int(encoder.min_size)) // m) * m for s_ in (side, time_side))
    device = encoder.members[0].device
    members = autocast_members(encoder.members, precision, device)
    if decoded:
        from .objectives import style_stack
        stacks = [style_stack(m_.module) if styled else None for m_ in encoder.members]
        members = [m_ if m_.decode is None else (lambda x, m_=m_: m_.decode(m_(x))) if net is None else
                   (lambda x, m_=m_, net=net: net(m_.decode(m_(x)).to(next(net.parameters()).dtype)))
                   for m_, net in zip(members, stacks)]
    key = (encoder.name, str(device), tuple(str(x.dtype) for x in encoder.members), side, time_side,
           str(resolve(precision, device)), bool(decoded), bool(decoded and styled))
    if key not in _PROBES:
        saved = _saved_bytes(members, side, device) / side ** 2  # (this pass also pays the one-off costs)
        small = _pass(members, side, device)
        slow = small * (time_side / side) ** 2 > PROBE_SECONDS
        if slow:  # a slow model (a full VAE with its decoder on a CPU): its cost per pixel hardly depends on the side
            seconds = small / side ** 2
        else:
            seconds = _pass_seconds(members, time_side, device) / time_side ** 2
        _PROBES[key] = Probe(saved, seconds, slow)
    return _PROBES[key]


def _pass(members, side: int, device, hook=None) -> float:
    """Seconds of one forward + backward pass of ``members`` on a grey ``side``² image (``hook``: saved tensors)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.full((1, 3, side, side), 0.5, device=device, requires_grad=True)
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(hook or (lambda t: t), lambda t: t):
            total = sum(m_(x).float().pow(2).mean() for m_ in members)
        torch.autograd.grad(total, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def _saved_bytes(members, side: int, device) -> float:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some wrappers)
            seen[id(t)] = t.numel() * t.element_size()
        return t

    _pass(members, side, device, pack)
    return float(sum(seen.values()))


def _pass_seconds(members, side: int, device) -> float:
    """The median of three timed passes after one that pays the one-off costs (allocations, kernel choice): one
    timed pass varied up to 2x on a shared CPU."""
    _pass(members, side, device)
    return sorted(_pass(members, side, device) for _ in range(3))[1]


def batch_bytes(height: int, width: int, images: int) -> float:
    """What a batch of ``images`` images holds for the whole job, besides one image's work (BATCH_BYTES_PER_PIXEL)."""
    return float(BATCH_BYTES_PER_PIXEL) * int(height) * int(width) * int(images)


def step_passes(probed: Probe, passes: Passes) -> float:
    """What one step costs, in encoder passes over its pixels: the passes, the round-trip draws and, with robustness
    on, the step's own work where the encoder is light (see the module's notes)."""
    if not passes.eot:
        return float(passes.per_step)
    work = 0.0 if probed.slow else STEP_WORK_PASSES
    return passes.per_step + max(1, int(passes.eot_samples)) * float(passes.roundtrip) + work * passes.per_step


def estimate_cost(probed: Probe, height: int, width: int, images: int, steps: int, multiple: int = 8,
                  passes: Passes = Passes(), batch_in_peak: bool = True) -> CostEstimate:
    """The cost of cloaking ``images`` images of ``height``×``width`` for ``steps`` steps, making ``passes`` per
    step. Images are cloaked one at a time, so one image's work does not grow with the batch; the batch's own copies
    do (:func:`batch_bytes`), and count in the peak when ``batch_in_peak`` (a CPU: the batch and the work share one
    memory; on a GPU the batch stays in CPU memory). Time grows with the batch."""
    from .tiling import plan_tiles
    m = max(1, int(multiple))
    ph, pw = -(-int(height) // m) * m, -(-int(width) // m) * m
    pixels = ph * pw
    tile = passes.tile
    tiles = plan_tiles(ph, pw, tile, passes.margin, m) if tile and pixels > tile * tile else []
    pass_pixels = max((t.crop_pixels for t in tiles), default=pixels)
    work_pixels = sum(t.crop_pixels for t in tiles) or pixels
    batch = batch_bytes(ph, pw, images)
    peak = (probed.bytes_per_pixel * passes.per_step * pass_pixels + state_bytes(passes) * pixels) * OVERHEAD
    peak += batch if batch_in_peak else 0.0
    step = probed.seconds_per_pixel * work_pixels * step_passes(probed, passes)
    seconds = step * (int(steps) + FIXED_STEPS) * int(images)
    return CostEstimate(peak, seconds, pixels, int(images), int(steps), passes.per_step, max(1, len(tiles)), batch)


def max_tile_side(probed: Probe, height: int, width: int, free_bytes: float, passes: Passes = Passes(),
                  multiple: int = 8, reserved_bytes: float = 0.0) -> int:
    """The largest tile side (a multiple of ``multiple``, at most the image's longer side) whose pass fits in
    ``free_bytes`` beside the whole image's own tensors and ``reserved_bytes`` (e.g. the batch's copies), with
    ``passes.margin`` px of context; 0 when not even a 64 px tile fits. (``passes.tile`` is not read: this is what
    chooses it.)"""
    room = ((HEADROOM * float(free_bytes) - float(reserved_bytes)) / OVERHEAD
            - state_bytes(passes) * int(height) * int(width))
    if room <= 0:
        return 0
    crop = (room / max(probed.bytes_per_pixel * passes.per_step, 1e-9)) ** 0.5
    if crop * crop >= int(height) * int(width):
        return max(int(height), int(width))  # the whole image fits in one pass
    side = int(crop) - 2 * int(passes.margin)
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
            "Upscale Image By 0.5), set a smaller tile_size, choose robustness off (fewer passes per step), "
            + (f"cloak fewer of the {estimate.images} images per run (the batch holds "
               f"{estimate.batch_bytes / 2**30:.2f} GiB), " if estimate.images > 1 else "")
            + "or use a machine with more memory")


__all__ = ["Probe", "Passes", "CostEstimate", "batch_bytes", "probe", "step_passes", "estimate_cost", "max_tile_side", "fits_in_memory", "refusal_message",
           "format_seconds"]
