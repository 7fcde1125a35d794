"""The one optimisation loop shared by Glaze, Nightshade, the reference attack and IMPRESS purification.

``optimize`` minimises ``loss_fn(view(x + δ))`` over a perturbation δ kept inside ``budget``, optionally
in expectation over random transforms (EOT). Objectives, budgets and transforms are passed in; the loop
knows nothing of what they mean. Seeded and deterministic on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch


class Cancelled(Exception):
    """Raised when ``should_stop()`` returns True (the user pressed Cancel)."""


@dataclass
class OptimizeResult:
    delta: torch.Tensor
    steps_run: int
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False


STEP_RULES = ("adam", "l2", "sign")


@dataclass(frozen=True)
class Schedule:
    """How the loop steps.

    ``steps``             optimisation steps;
    ``step_rule``         "adam": Adam moments, step ``lr·caps`` decaying (cosine) to ``lr_final·caps``;
                          "l2": momentum on the gradient normalised per image in budget units (steepest
                          descent for an L2 budget), same schedule;
                          "sign": signed gradient, step decaying linearly from ``lr·caps`` to 1/100 of it
                          (PhotoGuard's schedule);
    ``patience``          stop when the smoothed loss has not improved by ``min_rel_improvement`` for
                          this many steps (0: never stop early);
    ``seed``              seeds the run's random draws (EOT transforms, noise): a run is a function of its schedule.
    """

    steps: int
    step_rule: str = "adam"
    lr: float = 0.25
    lr_final: float = 0.01
    patience: int = 0
    min_rel_improvement: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"unknown step rule {self.step_rule!r}; choose one of {STEP_RULES}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


@dataclass(frozen=True)
class Hooks:
    """What a host hears and says during a run: ``on_progress(done, total)`` over a whole batch's steps (a
    progress bar), ``should_stop()`` checked every step and between tiles (Cancel), ``on_step(step, steps, loss,
    δ)`` per step of one image (benches, traces)."""

    on_progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_step: Callable[[int, int, float, torch.Tensor], None] | None = None


def optimize(
    x: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    budget,
    schedule: Schedule,
    *,
    transforms: Callable | None = None,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    hooks: Hooks = Hooks(),
    init: torch.Tensor | None = None,
) -> OptimizeResult:
    """Optimise a perturbation of ``x`` (``[B, 3, H, W]`` in 0..1) for ``schedule.steps`` steps.

    ``loss_fn(pixels, warp) -> [B]``  per-image loss to minimise (see engine.objectives); or an
                          engine.tiling.TiledGradient, which computes the loss's gradient on ``view(x + δ)``
                          tile by tile, in bounded memory, instead of the loss on the whole image;
    ``budget``            has ``setup(x)``, ``caps`` (per-pixel step scale), ``project(x, δ)``, ``penalty``;
    ``transforms(pixels, generator) -> (pixels, warp)``  an EOT draw; ``samples`` attribute = draws/step;
    ``view``              applied to ``x + δ`` before transforms (e.g. padding to the encoder's multiple);
    ``hooks``             ``on_step`` after every step, ``should_stop`` before it (raises :class:`Cancelled`);
    ``init``              a starting perturbation (e.g. an amortised warm start), projected into the budget first;
                          zero when None.
    """
    # a tiled gradient (engine.tiling.TiledGradient) says so: it returns the gradient itself, not a loss
    region_grad = loss_fn if getattr(loss_fn, "returns_gradient", False) else None
    steps, step_rule, lr, lr_final = schedule.steps, schedule.step_rule, schedule.lr, schedule.lr_final
    patience, min_rel_improvement = schedule.patience, schedule.min_rel_improvement
    on_step, should_stop = hooks.on_step, hooks.should_stop
    x = x.detach().float()
    budget.setup(x)
    caps = budget.caps
    gen = torch.Generator(device="cpu").manual_seed(int(schedule.seed))
    delta = torch.zeros_like(x) if init is None else budget.project(x, init.detach().float().to(x.device))
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = 0.9, 0.999
    losses: list[float] = []
    smooth, best_smooth, since_best = None, math.inf, 0
    samples = max(1, int(getattr(transforms, "samples", 1))) if transforms is not None else 1
    # share of the loss given to the untransformed image every step when transforms are drawn (EOT): keeps
    # the clean effect strong while the drawn transforms make it survive re-saving and resizing
    clean_weight = float(getattr(transforms, "clean_weight", 0.0)) if transforms is not None else 0.0

    for t in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled at step {t} of {steps}")
        delta.requires_grad_(True)
        x_adv = x + delta
        seen = view(x_adv) if view is not None else x_adv
        if region_grad is not None:
            seen_grad, value = region_grad(seen.detach(), transforms, gen, samples, clean_weight)
            penalty = budget.penalty(x, x_adv)
            outs = [seen] + ([penalty.sum()] if penalty is not None else [])
            (grad,) = torch.autograd.grad(outs, delta, [seen_grad] + ([torch.ones(())] if penalty is not None
                                                                        else []))
            value /= x.shape[0]
        else:
            total = loss_fn(seen, None).sum() * clean_weight if clean_weight > 0 else 0.0
            for _ in range(samples):
                warped, warp = transforms(seen, gen) if transforms is not None else (seen, None)
                total = total + loss_fn(warped, warp).sum() * (1 - clean_weight) / samples
            penalty = budget.penalty(x, x_adv)
            objective = total + (penalty.sum() if penalty is not None else 0.0)
            (grad,) = torch.autograd.grad(objective, delta)
            value = float(total.detach()) / x.shape[0]
        losses.append(value)

        with torch.no_grad():
            delta = delta.detach()
            frac = t / max(1, steps - 1)
            if step_rule == "sign":
                size = lr * (1 - frac * 0.99)
                delta -= size * caps * grad.sign()
            elif step_rule == "l2":
                size = lr_final + (lr - lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
                g_u = caps * grad  # gradient in budget units (δ = caps ⊙ u)
                g_u = g_u / g_u.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-20).view(-1, 1, 1, 1)
                m.mul_(b1).add_(g_u, alpha=1 - b1)
                delta -= size * caps * m / (1 - b1 ** (t + 1))
            else:
                size = lr_final + (lr - lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m_hat = m / (1 - b1 ** (t + 1))
                v_hat = v / (1 - b2 ** (t + 1))
                delta -= size * caps * m_hat / (v_hat.sqrt() + 1e-12)
            delta = budget.project(x, delta)

        if on_step is not None:
            on_step(t + 1, steps, value, delta)
        if patience:
            smooth = value if smooth is None else 0.8 * smooth + 0.2 * value
            if smooth < best_smooth * (1 - min_rel_improvement):
                best_smooth, since_best = smooth, 0
            else:
                since_best += 1
                if since_best >= patience:
                    return OptimizeResult(delta.detach(), t + 1, losses, stopped_early=True)
    return OptimizeResult(delta.detach(), steps, losses)
