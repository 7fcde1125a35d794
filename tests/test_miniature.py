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


_TRAINED = {}  # the two-style model, kept for the next test (trained again when that one runs alone)


def test_a_class_conditional_miniature_fits_each_class_and_is_moved_by_its_data(tmp_path):
    z, y = two_styles()
    losses = []
    model = M.train(z, y, M.MiniConfig(channels=4, width=32, classes=2),
                    M.TrainSettings(steps=250, batch=32, lr=3e-3, seed=0), on_step=lambda s, n, l: losses.append(l))
    _TRAINED["two styles"] = model
    assert sum(losses[-40:]) / 40 < 0.95 * sum(losses[:40]) / 40  # it learns (v-loss has a high floor on noisy data)
    fz = features(z)
    for cls in (0, 1):
        out = M.sample(model, 32, (8, 8), M.Sampler(30), seed=1, labels=torch.full((32,), cls))
        assert torch.isfinite(out).all() and out.shape == (32, 4, 8, 8)
        fit = M.fit_ratio(features(out), fz[y == cls], fz[y == 0], fz[y == 1])
        other = M.fit_ratio(features(out), fz[y != cls], fz[y == 0], fz[y == 1])
        assert fit < 0.25 and other > 0.75, (cls, fit, other)  # its own class's style, not the other's
    path = str(tmp_path / "mini.safetensors")
    M.save(model, path)
    again = M.load(path)
    assert torch.equal(M.sample(again, 4, (8, 8), M.Sampler(5), seed=2, labels=torch.zeros(4, dtype=torch.long)),
                       M.sample(model, 4, (8, 8), M.Sampler(5), seed=2, labels=torch.zeros(4, dtype=torch.long)))


def test_the_noise_prediction_knows_its_caption_and_carries_gradients():
    """predict_noise (the poison's noise objective against a miniature model): on class-0 latents the noise is
    predicted better under caption 0 than under caption 1, the prediction is differentiable in the latents, and
    noise_predictor maps the schedule's u (0 = most noise) to time 1 - u and checks the caption."""
    z, y = two_styles()
    model = _TRAINED.get("two styles") or M.train(z, y, M.MiniConfig(channels=4, width=32, classes=2),
                                                  M.TrainSettings(steps=250, batch=32, lr=3e-3, seed=0))
    x = z[y == 0][:32].clone().requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(x.shape, generator=g)
    t = torch.full((32,), 0.5)
    err = {c: float((M.predict_noise(model, x, t, noise, torch.full((32,), c)) - noise).detach().pow(2).mean())
           for c in (0, 1)}
    assert err[0] < 0.8 * err[1], err
    predict, sigmas = M.noise_predictor(model, 0)
    (grad,) = torch.autograd.grad(predict(x, t, noise).pow(2).sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    assert torch.allclose(sigmas(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([1 - 1e-3, 0.75, 1e-3]))
    import pytest
    with pytest.raises(ValueError, match="class id"):
        M.noise_predictor(model, None)


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


def test_purify_pulls_an_off_distribution_latent_back_toward_the_training_style(tmp_path):
    """DiffPure in miniature: latents of class 0 with a perturbation the data never had (a checkerboard in channel
    1, as a cloak's fine pattern) are denoised at strength 0.6 toward the training data; strength 0.05 keeps more
    of the pattern."""
    z, y = two_styles()
    model = M.train(z[y == 0], None, M.MiniConfig(channels=4, width=32),
                    M.TrainSettings(steps=250, batch=32, lr=3e-3, seed=0))
    x = z[y == 0][:16].clone()
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2 - 1).float()
    bad = x.clone()
    bad[:, 1] += 0.6 * checker
    strong = M.purify(model, bad, 0.6, steps=20, seed=0)
    weak = M.purify(model, bad, 0.05, steps=20, seed=0)
    assert strong.shape == bad.shape and torch.isfinite(strong).all()
    pattern = lambda v: float(((v[:, 1] - x[:, 1]) * checker).mean())  # noqa: E731  the checkerboard left
    assert abs(pattern(strong)) < 0.75 * pattern(bad), (pattern(strong), pattern(bad))  # measured 0.59
    assert pattern(weak) > abs(pattern(strong)) + 0.1
    assert torch.equal(M.purify(model, bad, 0.6, steps=20, seed=0), strong)  # seeded
    import pytest
    with pytest.raises(ValueError, match="strength"):
        M.purify(model, bad, 0.0)
    # saved as safetensors (float16 when asked), with metadata; a file that is not one is refused by name
    path = str(tmp_path / "purifier.safetensors")
    M.save(model, path, half=True, tae="test")
    assert M.read_metadata(path)["tae"] == "test"
    again = M.load(path)
    assert (M.purify(again, bad, 0.6, steps=20, seed=0) - strong).abs().max() < 0.05
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.safetensors"):
        M.load(str(junk))


def test_purify_under_another_caption_redraws_as_that_class():
    """SDEdit in miniature (the poison bench's per-image anchors): class-0 latents noised to 0.8 and denoised under
    caption 1 come out nearer class 1's style than under caption 0; a class-conditional model needs the labels."""
    import pytest
    z, y = two_styles()
    model = _TRAINED.get("two styles") or M.train(z, y, M.MiniConfig(channels=4, width=32, classes=2),
                                                  M.TrainSettings(steps=250, batch=32, lr=3e-3, seed=0))
    x = z[y == 0][:16]
    as_other = M.purify(model, x, 0.8, steps=20, seed=0, labels=torch.ones(16, dtype=torch.long))
    as_self = M.purify(model, x, 0.8, steps=20, seed=0, labels=torch.zeros(16, dtype=torch.long))
    channel0 = lambda v: float(v[:, 0].mean())  # noqa: E731  class 0 high, class 1 low
    assert channel0(as_other) < channel0(as_self) - 0.5, (channel0(as_other), channel0(as_self))
    with pytest.raises(ValueError, match="label"):
        M.purify(model, x, 0.8)


def test_crops_cover_the_whole_image_and_refuse_small_ones():
    x = torch.rand(2, 3, 100, 70)
    c = M.crops(x, 32, 16)
    ys, xs = [0, 16, 32, 48, 64, 68], [0, 16, 32, 38]
    assert c.shape == (2 * len(ys) * len(xs), 3, 32, 32)
    assert torch.equal(c[len(ys) * len(xs) - 1], x[0, :, 68:100, 38:70])  # the last crop is flush with the corner
    import pytest
    with pytest.raises(ValueError, match="smaller than the 128"):
        M.crops(torch.rand(1, 3, 100, 200), 128, 64)


class Doubled(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


def test_a_purifier_is_found_only_for_the_encoder_it_was_trained_on(tmp_path):
    """The probe fingerprint tells latent spaces apart: another encoder of the same shape is refused, with the
    reason and the way out; the same encoder at twice the scale (as ComfyUI's VAE wrapper scales a TAE) is found,
    with its scale."""
    P = __import__(E.__name__ + ".purifier", fromlist=["find_purifier"])
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 8, stride=8)
    enc, doubled = E.module_encoder(conv, "a"), E.module_encoder(Doubled(conv), "a2")
    other = E.module_encoder(torch.nn.Conv2d(3, 4, 8, stride=8), "b")
    model = M.train(torch.randn(8, 4, 4, 4), None, M.MiniConfig(channels=4, width=16),
                    M.TrainSettings(steps=2, batch=4))
    found = P.find_purifier(enc, str(tmp_path))
    assert found.path is None and "no miniature purifier" in found.reason
    M.save(model, str(tmp_path / "purifier_a.safetensors"), **P.fingerprint_metadata(enc))
    found = P.find_purifier(enc, str(tmp_path))
    assert found.path.endswith("purifier_a.safetensors") and abs(found.scale - 1) < 1e-5
    assert abs(P.find_purifier(doubled, str(tmp_path)).scale - 2) < 1e-4
    wrong = P.find_purifier(other, str(tmp_path))
    assert wrong.path is None and "purifier_a.safetensors (probe latent cosine" in wrong.reason, wrong
    assert "scripts/train_purifier.py" in wrong.reason


def test_ancestral_sampling_is_seeded_and_differs_from_deterministic_ddim():
    z, _ = two_styles(16)
    model = M.train(z, None, M.MiniConfig(channels=4, width=16), M.TrainSettings(steps=3, batch=8, seed=0))
    a = M.sample(model, 4, (8, 8), M.Sampler(6, eta=1.0), seed=3)
    assert torch.equal(a, M.sample(model, 4, (8, 8), M.Sampler(6, eta=1.0), seed=3))
    assert not torch.equal(a, M.sample(model, 4, (8, 8), M.Sampler(6, eta=0.0), seed=3))
    assert torch.isfinite(a).all() and a.shape == (4, 4, 8, 8)


def test_autoguidance_weak_model_is_trained_saved_and_guides(tmp_path):
    z, _ = two_styles(16)
    calls = []
    model = M.train(z, None, M.MiniConfig(channels=4, width=16, attention=True),
                    M.TrainSettings(steps=4, batch=8, seed=0, weak_width=8), on_step=lambda i, n, _: calls.append((i, n)))
    assert calls == [(i, 8) for i in range(1, 9)]  # one progress count over both models
    assert model.weak is not None and model.weak.config.width == 8 and model.weak.weak is None
    assert torch.equal(model.weak.mean, model.mean)  # the same data's normalisation
    plain = M.sample(model, 4, (8, 8), M.Sampler(6, eta=1.0), seed=3)
    guided = M.sample(model, 4, (8, 8), M.Sampler(6, eta=1.0, guidance=1.0), seed=3)
    assert not torch.equal(plain, guided) and torch.isfinite(guided).all()
    M.save(model, str(tmp_path / "m.safetensors"))
    again = M.load(str(tmp_path / "m.safetensors"))
    assert again.weak is not None and again.weak.config.width == 8 and again.config.attention
    assert torch.equal(M.sample(again, 4, (8, 8), M.Sampler(6, eta=1.0, guidance=1.0), seed=3), guided)
    alone = M.train(z, None, M.MiniConfig(channels=4, width=16), M.TrainSettings(steps=4, batch=8, seed=0))
    assert alone.weak is None  # no weak version: guidance is a no-op
    assert torch.equal(M.sample(alone, 2, (8, 8), M.Sampler(4, guidance=2.0), seed=1),
                       M.sample(alone, 2, (8, 8), M.Sampler(4), seed=1))
