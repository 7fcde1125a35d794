"""Train / Sample Miniature Mimic inside a real ComfyUI: the demo TAESD loaded by file with its decoder, a few
training steps on crops of the bundled sample (the full mimicry bench, minutes per model, runs outside CI), the
samples' shape and determinism, and the errors a user meets (no decoder, crop too large or off the grid)."""
from __future__ import annotations

import types

import pytest
import torch


@pytest.fixture(scope="module")
def mn(comfy_host, sample_image, taesd_vae):
    nodes = comfy_host.pack.nodes
    tae = nodes.encoder_nodes.LoadVAEEncoder.execute(vae_name="none", precision="auto", weight=1.0,
                                                     tae_name="taesd_encoder.safetensors").args[0]
    # an encoder without a decoder (a TAE file alone, e.g. taesana_encoder.pth): the adapter's copy without it
    vae_only = comfy_host.pack.engine.as_ensemble(nodes.comfy_adapters.vae_encoder(taesd_vae, "auto",
                                                                                    keep_decoder=False))
    return types.SimpleNamespace(N=nodes.mimicry_nodes, S=nodes.scoring_nodes, tae=tae, vae_only=vae_only,
                                 image=sample_image[:, :96, :128].contiguous())


def test_train_then_sample_draws_crops_through_the_decoder(mn):
    mimic, report = mn.N.TrainMiniatureMimic.execute([mn.image], [mn.tae], steps=[6], seed=[0], crop_size=[32]).args
    assert report.startswith("TrainMiniatureMimic | ") and "crops of 32²" in report and "6 steps" in report
    assert "latents [4, 4, 4]" in report, report  # TAESD: 4 channels at 1/8
    # a grid at half the crop's stride, flush with the far edges: 5 rows x 7 columns of 32² crops of 96x128
    assert "35 crops" in report, report
    assert "weak model" in report and mimic.model.weak is not None  # autoguidance's weaker twin, trained alongside
    (samples,) = mn.N.SampleMiniatureMimic.execute(mimic, count=3, seed=5, sampler_steps=4).args
    assert samples.shape == (3, 32, 32, 3) and samples.dtype == torch.float32
    assert float(samples.min()) >= 0 and float(samples.max()) <= 1 and float(samples.std()) > 0
    (again,) = mn.N.SampleMiniatureMimic.execute(mimic, count=3, seed=5, sampler_steps=4).args
    assert torch.equal(samples, again)  # seeded
    (other,) = mn.N.SampleMiniatureMimic.execute(mimic, count=3, seed=6, sampler_steps=4).args
    assert not torch.equal(samples, other)
    (unguided,) = mn.N.SampleMiniatureMimic.execute(mimic, count=3, seed=5, sampler_steps=4, guidance=0.0).args
    assert not torch.equal(samples, unguided)  # the default guides away from the weak model
    same = mn.N.TrainMiniatureMimic.execute([mn.image], [mn.tae], steps=[6], seed=[0], crop_size=[32]).args[0]
    assert all(torch.equal(a, b) for a, b in zip(same.model.state_dict().values(),
                                                 mimic.model.state_dict().values()))  # same seed, same model


def test_clear_errors_for_what_the_mimic_cannot_use(mn):
    with pytest.raises(ValueError, match="needs an encoder with its decoder"):
        mn.N.TrainMiniatureMimic.execute([mn.image], [mn.vae_only], steps=[2], seed=[0], crop_size=[32])
    with pytest.raises(ValueError, match="multiple of 16"):
        mn.N.TrainMiniatureMimic.execute([mn.image], [mn.tae], steps=[2], seed=[0], crop_size=[40])
    with pytest.raises(ValueError, match="smaller than the 128² crops"):
        mn.N.TrainMiniatureMimic.execute([mn.image], [mn.tae], steps=[2], seed=[0], crop_size=[128])


def test_the_score_labels_the_rows_as_mimics(mn, style_image):
    a, t = mn.image, style_image[:, :96, :128].contiguous()
    grid, report, _ = mn.S.StyleMimicryScore.execute([mn.tae], [a], [t], [a * 0.8 + 0.2 * t], [0.5 * (a + t)], [32],
                                                     ["miniature mimic"]).args
    assert "| mimic | measure |" in report and "mimic on cloaked set" in report and "LoRA" not in report
    lora_report = mn.S.StyleMimicryScore.execute([mn.tae], [a], [t], [a * 0.8 + 0.2 * t], [0.5 * (a + t)],
                                                 [32]).args[1]
    assert "| LoRA | measure |" in lora_report  # the old default, for saved workflows without the input
