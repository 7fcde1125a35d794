"""ComfyUI-Cloak engine: pure torch + kornia, no ComfyUI imports. See DESIGN.md §2."""
from .budgets import AdaptiveBudget, LinfBox, LpipsBudget, quantize_to_8bit, texture_map
from .cloak import (CloakOptions, CloakSettings, INTENSITY, RENDER_QUALITY, format_report, latent_sizes, padder,
                    reference_settings, settings_for)
from .encoders import CallableEncoder, EncoderEnsemble, LatentEncoder, as_ensemble, module_encoder, tae_encoder
from .metrics import psnr, ssim, target_gain
from .objectives import (DecodedLatentMatch, LatentMatch, LatentStyleStats, StyleTarget, make_style_target, objective_for_target,
                         style_target_from_latents)
from .job import CloakJob, cloak_images, glaze_objectives
from .optimize import Cancelled, Hooks, Schedule, optimize
from .transforms import EOT, ROBUSTNESS_LEVELS
