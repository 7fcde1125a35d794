"""Every dtype rule of the pack: the precision of the encoder passes inside a cloak's optimisation (pass
precision, autocast) and the dtype an encoder's weights are kept in (weight dtype, LoadVAEEncoder's
``precision``).

Autocast runs the encoder's convolutions in bfloat16 (or float16 on GPUs without bf16) while the perturbation,
its optimiser state, the budget's projection, calibration and the final report stay float32. On a CPU with
AVX512-BF16 or AMX it is about 2.8x faster than float32 per pass (bench/bench_scale.py); on a CPU without them
bf16 is emulated and slower, so "auto" keeps float32 there.
"""
from __future__ import annotations

import contextlib
import functools

import torch

PASS_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# LoadVAEEncoder's choices for the weights; auto: the model's own dtype (see weight_dtype)
WEIGHT_DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(choice: str, own: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype an encoder's (or autoencoder's) weights are kept in for a ``choice`` of WEIGHT_DTYPES (``auto``:
    ``own``, the model's own); fp16 falls back to fp32 on a CPU, where fp16 convolutions are not implemented on
    every build."""
    if choice not in WEIGHT_DTYPES:
        raise ValueError(f"unknown precision {choice!r}; choose one of {list(WEIGHT_DTYPES)}")
    dtype = WEIGHT_DTYPES[choice] or own
    return torch.float32 if torch.device(device).type == "cpu" and dtype == torch.float16 else dtype


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the encoder passes use for ``precision`` on ``device`` (float32 = no autocast)."""
    if precision not in PASS_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PASS_PRECISIONS}")
    device = torch.device(device)
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def precision_context(precision: str, device: torch.device | str):
    """An autocast context for ``precision`` on ``device`` (a no-op for float32)."""
    dtype = resolve(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise ValueError("precision fp16 is for GPUs; on a CPU choose bf16 or fp32")
    return torch.autocast(torch.device(device).type, dtype=dtype)


class Autocast:
    """An ensemble member whose passes run under autocast to ``dtype`` (latents returned as float32); everything
    else (name, multiple, decode, ...) is the member's. Only the encoder is autocast: the EOT transforms, the
    loss and the step stay float32."""

    def __init__(self, member, dtype: torch.dtype):
        self.member, self.autocast_dtype = member, dtype

    def __getattr__(self, name):
        return getattr(self.member, name)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(torch.device(self.member.device).type, dtype=self.autocast_dtype):
            return self.member(pixels).float()

    @property
    def decode(self):
        """The member's decoder (for EOT round-trip draws), autocast the same way; None when it has none."""
        inner = self.member.decode
        if inner is None:
            return None

        def decode(z):
            with torch.autocast(torch.device(self.member.device).type, dtype=self.autocast_dtype):
                return inner(z).float()
        return decode


def autocast_members(members: list, precision: str, device) -> list:
    """``members`` wrapped in :class:`Autocast` for ``precision`` (unchanged for float32)."""
    dtype = resolve(precision, device)
    if dtype == torch.float32:
        return list(members)
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise ValueError("precision fp16 is for GPUs; on a CPU choose bf16 or fp32")
    return [Autocast(m, dtype) for m in members]


__all__ = ["PASS_PRECISIONS", "WEIGHT_DTYPES", "weight_dtype", "resolve", "precision_context", "cpu_has_fast_bf16", "Autocast", "autocast_members"]
