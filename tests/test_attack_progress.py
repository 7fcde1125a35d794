"""RobustnessCheck's progress bar moves inside IMPRESS (one tick per step), not only between attacks."""
from __future__ import annotations

from importlib import import_module


def test_progress_ticks_inside_impress_and_lands_on_each_attack(comfy_host, taesd_vae, sample_image, style_image):
    import comfy.utils

    pack = comfy_host.pack.__name__
    robustness = import_module(pack + ".nodes.robustness_nodes")
    attacks = import_module(pack + ".engine.attacks")
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, node_id=None: seen.append((value, total)))
    try:
        progress = robustness.AttackProgress(attacks.parse_attacks("jpeg:75, impress:4"))
        assert progress.total == 1 + 1 + 2 * 4
        for _ in range(5):  # would-be calls between/inside the first attack never run past its share
            progress.should_stop()
        assert progress.done == 0
        progress.on_attack(1, 2)
        for _ in range(20):
            progress.should_stop()
        assert progress.done == progress.total - 1  # capped until the attack reports its end
        progress.on_attack(2, 2)
        assert seen[-1] == (10, 10) and len({v for v, _ in seen}) > 5

        seen.clear()  # a real run: the bar moves during IMPRESS
        from importlib import import_module as im
        enc_nodes = im(pack + ".nodes.encoder_nodes")
        encoder = enc_nodes.LoadVAEEncoder.execute("none", "auto", 1.0, vae=taesd_vae).args[0]
        small, style = sample_image[:, :64, :64], style_image[:, :64, :64]
        target = enc_nodes.StyleTargetLatents.execute(encoder, style, "per_image").args[0]
        robustness.RobustnessCheck.execute(small, (small + 0.02).clamp(0, 1), encoder, target, "impress:3", 0,
                                           vae=taesd_vae)
        values = [v for v, _ in seen]
        assert values[-1] == seen[-1][1] == 7 and len(set(values)) >= 5, seen
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
