"""A judge of another kind for the mimicry bench (issue 38, item 3): a small classifier trained here, from scratch,
on pixels, that tells one artist's crops from the target style's.

The bench's other judges compare style statistics (engine.style_score's pixel measure, Gram matrices of TAESANA's
encoder); this one learns its own decision from the two sets of decoded crops the bench already has (the artist's
D(E(x)) and the target's), and reads a set of pictures as the share of them it calls "target". It never sees the
cloak, the cloaked sets or the mimics' samples while it learns. Its held-out accuracy (trainings that each leave
one whole source picture out of both sets, tested on that picture's crops) says whether its calls mean anything:
the bench prints it beside every figure and leaves the judge out below HELD_OUT_FLOOR.

Network: four 3×3 convolutions (16-32-64-64 channels, stride 2, GELU; no normalisation, which would hide the
palette and contrast a style is partly made of) and a linear read-out of the
channel means: about 60 k weights, 300 steps of 64 crops; trained with AdamW, flips and 90° turns (style, not layout), seeded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HELD_OUT_FLOOR = 0.75  # a classifier below this held-out accuracy is reported and not used as a judge


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for c in (16, 32, 64, 64):
            layers += [torch.nn.Conv2d(c_in, c, 3, 2, 1), torch.nn.GELU()]
            c_in = c
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c_in, 1)

    def forward(self, x):
        return self.head(self.body(x * 2 - 1).mean((-2, -1)))[:, 0]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, (), generator=gen)), (-2, -1))


def train_net(a: torch.Tensor, t: torch.Tensor, seed: int = 0, steps: int = 300, batch: int = 64) -> _Net:
    """The network trained from scratch to tell ``a`` (0) from ``t`` (1), seeded."""
    torch.manual_seed(seed)
    net = _Net()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([a, t])
    y = torch.cat([torch.zeros(a.shape[0]), torch.ones(t.shape[0])])
    net.train()
    with torch.enable_grad():
        for _ in range(steps):
            i = torch.randint(x.shape[0], (batch,), generator=gen)
            loss = F.binary_cross_entropy_with_logits(net(_augment(x[i], gen)), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def logits(net: _Net, x: torch.Tensor) -> torch.Tensor:
    """The network's logit per picture (``[N]``; > 0: class 1)."""
    return torch.cat([net(x[i:i + 64]) for i in range(0, x.shape[0], 64)])


def _calls(net: _Net, x: torch.Tensor) -> torch.Tensor:
    return (logits(net, x) > 0).float()


class PixelClassifier:
    """Artist (0) vs target (1) on pixels. ``artist`` and ``target``: crops ``[N, 3, s, s]`` of ``pictures``
    pictures, in picture order. :attr:`accuracy`: the mean held-out accuracy over ``folds`` trainings that each
    leave one whole picture out of both sets (the first, a middle and the last: one picture alone can be unlike
    the rest, e.g. painting's sixth, which alone gave 0.67 where the others gave 1.0); the judge itself is then
    trained on every picture."""

    def __init__(self, artist: torch.Tensor, target: torch.Tensor, pictures: int, seed: int = 0,
                 steps: int = 300, batch: int = 64, folds: int = 3):
        n_a, n_t = artist.shape[0] // pictures, target.shape[0] // pictures
        held = sorted({round(k * (pictures - 1) / max(1, folds - 1)) for k in range(folds)}) if pictures > 1 else []
        accs = []
        for p in held:
            keep_a = torch.ones(artist.shape[0], dtype=torch.bool)
            keep_a[p * n_a:(p + 1) * n_a] = False
            keep_t = torch.ones(target.shape[0], dtype=torch.bool)
            keep_t[p * n_t:(p + 1) * n_t] = False
            net = train_net(artist[keep_a], target[keep_t], seed, steps, batch)
            accs.append(0.5 * (float((_calls(net, artist[~keep_a]) == 0).float().mean())
                               + float((_calls(net, target[~keep_t]) == 1).float().mean())))
        self.fold_accuracy = accs
        self.accuracy = sum(accs) / len(accs) if accs else float("nan")
        self.net = train_net(artist, target, seed, steps, batch)

    def calls(self, x: torch.Tensor) -> torch.Tensor:
        """1.0 where the classifier calls a picture "target", else 0.0 (``[N]``)."""
        return _calls(self.net, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The call as a one-number feature ``[N, 1]``: a set's mean is the share of it called "target"."""
        return self.calls(x)[:, None]


__all__ = ["PixelClassifier", "HELD_OUT_FLOOR", "train_net", "logits"]
