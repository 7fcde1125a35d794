"""The miniature latent diffusion model (engine/miniature.py), fast: it fits its training set and is moved by it.

A fit-and-shift check on synthetic latents in seconds; the full mimicry bench (TAEF2 latents of art, minutes per
model) runs outside CI."""
from __future__ import annotations

import torch

from test_engine import E  # the engine imported on its own, as a library user would

M = __import__(E.__name__ + ".miniature", fromlist=["train"])


def two_styles(n=96, seed=0):
    """Class 0: channel 0 high, a horizontal stripe pattern; class 1: channel 0 low, vertical stripes."""
    g = torch.Generator().manual_seed(seed)
    z = 0.3 * torch.randn(n, 4, 8, 8, generator=g)
    labels = torch.arange(n) % 2
    stripes = torch.sin(torch.arange(8.0) * 1.6)
    z[labels == 0, 0] += 1.0 + stripes.view(1, 8, 1)
    z[labels == 1, 0] -= 1.0 + stripes.view(1, 1, 8)
    return z, labels


def features(z):
    """Per-sample style features: channel means and stds, row/column profile energy of channel 0."""
    c0 = z[:, 0]
    return torch.cat([z.mean((2, 3)), z.std((2, 3)), c0.mean(2).std(1, keepdim=True), c0.mean(1).std(1, keepdim=True)], 1)


def test_a_class_conditional_miniature_fits_each_class_and_is_moved_by_its_data(tmp_path):
    z, y = two_styles()
    losses = []
    model = M.train(z, y, M.MiniConfig(channels=4, width=32, classes=2),
                    M.TrainSettings(steps=250, batch=32, lr=3e-3, seed=0), on_step=lambda s, n, l: losses.append(l))
    assert sum(losses[-40:]) / 40 < 0.95 * sum(losses[:40]) / 40  # it learns (v-loss has a high floor on noisy data)
    fz = features(z)
    for cls in (0, 1):
        out = M.sample(model, 32, (8, 8), steps=30, seed=1, labels=torch.full((32,), cls))
        assert torch.isfinite(out).all() and out.shape == (32, 4, 8, 8)
        fit = M.fit_ratio(features(out), fz[y == cls], fz[y == 0], fz[y == 1])
        other = M.fit_ratio(features(out), fz[y != cls], fz[y == 0], fz[y == 1])
        assert fit < 0.25 and other > 0.75, (cls, fit, other)  # its own class's style, not the other's
    path = str(tmp_path / "mini.pt")
    M.save(model, path)
    again = M.load(path)
    assert torch.equal(M.sample(again, 4, (8, 8), steps=5, seed=2, labels=torch.zeros(4, dtype=torch.long)),
                       M.sample(model, 4, (8, 8), steps=5, seed=2, labels=torch.zeros(4, dtype=torch.long)))


def test_same_seed_same_model_and_clear_errors():
    z, _ = two_styles(32)
    settings = M.TrainSettings(steps=5, batch=8, seed=3)
    a = M.train(z, None, M.MiniConfig(channels=4, width=16), settings)
    b = M.train(z, None, M.MiniConfig(channels=4, width=16), settings)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    import pytest
    with pytest.raises(ValueError, match="channels"):
        M.train(z, None, M.MiniConfig(channels=32), settings)
    with pytest.raises(ValueError, match="needs one label"):
        M.train(z, None, M.MiniConfig(channels=4, classes=2), settings)
    with pytest.raises(ValueError, match="NaN"):
        M.train(torch.full_like(z, float("nan")), None, M.MiniConfig(channels=4), settings)
