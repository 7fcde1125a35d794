"""The pack's shared schema pieces, declared once: its custom socket types and the inputs that GlazePerturb and
NightshadePoison share (same names, same presets; node ids and input names are a public contract)."""
from __future__ import annotations

from comfy_api.latest import io

from ..engine.cloak import INTENSITY, RENDER_QUALITY
from ..engine.precision import PASS_PRECISIONS
from ..engine.transforms import ROBUSTNESS_LEVELS

CloakEncoder = io.Custom("CLOAK_ENCODER")
StyleTarget = io.Custom("STYLE_TARGET")

BUDGETS = ("adaptive", "linf", "lpips")


def cloak_inputs() -> list:
    """The inputs GlazePerturb and NightshadePoison share (same names, same presets)."""
    return [
        io.Combo.Input("intensity", options=list(INTENSITY) + ["custom"], default="default",
                       tooltip="How much the image may change. low: PSNR ≥ 38 dB, SSIM ≥ 0.96; default: PSNR ≥ 35 dB, "
                               "SSIM ≥ 0.93; high: PSNR ≥ 32 dB, SSIM ≥ 0.87 (more protection, more visible). "
                               "GlazePerturb (decoded objective on) keeps its change out of sight by HaarPSI in its "
                               "loss and has SSIM floors 0.05 lower (0.91 / 0.88 / 0.82): it changes more pixels and "
                               "looks less changed (since 2026-12-07). "
                               "A pixel moves at most 12 / 20 / 32 of 255 in busy texture (flat areas: half of it for "
                               "GlazePerturb, a tenth for NightshadePoison). "
                               "custom: at most custom_budget/255 per pixel, no PSNR/SSIM floor."),
        io.Combo.Input("render_quality", options=list(RENDER_QUALITY), default="default",
                       tooltip="How long to compute: faster = 15, default = 24, slowest = 300 optimisation steps "
                               "per image (NightshadePoison: 50 / 100 / 300). GlazePerturb's faster and default step "
                               "three and two times as far and, with the decoded objective, decode on one step in 3. "
                               "faster (since 2026-12-07; was 25 steps) takes about 0.6x the default's time. default "
                               "(24 steps since 2026-12-08; 30 since 2026-12-07; 100 plain steps before) takes about 29 s "
                               "for a 512² picture through TAEF2 on 2 CPU cores with native bf16; models trained on "
                               "cloaked illustration and painting moved toward the target 1.05-1.28x as far as after "
                               "the 30-step default in the pixel and TAESANA judges (0.68-1.11x in a pixel "
                               "classifier's). slowest: 300 plain steps, the strongest "
                               "cloak the pack knows."),
        io.Combo.Input("robustness", options=list(ROBUSTNESS_LEVELS), default="on",
                       tooltip="Optimise in expectation over JPEG, resizing, blur, noise and crops so the cloak "
                               "survives them. strong: harsher transforms, twice the compute. off: fastest, "
                               "but the cloak is easily washed out by re-saving or resizing."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                     tooltip="Seed of the random transforms; image i of a batch uses seed + i. Same seed, same "
                             "input, same device: same output."),
        io.Int.Input("custom_budget", default=8, min=1, max=64,
                     tooltip="Largest change of any pixel, in 1/255 steps, when intensity is custom."),
        io.Combo.Input("budget", options=list(BUDGETS), default="adaptive",
                       tooltip="Where change may go. adaptive: into texture, sparing flat colours and smooth "
                               "backgrounds (recommended). linf: the same cap everywhere. lpips: Glaze's "
                               "perceptual penalty; needs the lpips package and its downloaded weights."),
    ]


def scale_inputs() -> list:
    """Inputs for big images: added last and optional, so saved workflows (UI and API format alike) keep working
    with the automatic defaults."""
    return [
        io.Int.Input("tile_size", default=0, min=0, max=8192, step=16, optional=True,
                     tooltip="Advanced. 0 = automatic: images over 512x512 (CPU) or 2048x2048 (GPU) are cloaked "
                             "in tiles of about that size, smaller where free memory is short, so any size fits "
                             "in bounded memory (the change is still one whole-image change: no seams). A number "
                             "sets the tile side in pixels; a side at least the image's runs it in one piece."),
        io.Combo.Input("pass_precision", options=list(PASS_PRECISIONS), default="auto", optional=True,
                       tooltip="Advanced. Precision of the encoder passes while the cloak is computed (the change "
                               "itself, its steps and the report stay fp32). auto: bf16 where the hardware has "
                               "it natively (GPUs; CPUs with AVX512-BF16 or AMX: about 2x faster, protection "
                               "within 1 %), else fp32. fp16 is for GPUs only."),
    ]

