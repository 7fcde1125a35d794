"""The mimicry bench's pixel classifier judge (bench/classifier_judge.py) on synthetic styles: it learns a style
from pictures, not the pictures, and says so through its held-out accuracy."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import classifier_judge as CJ  # noqa: E402


def pictures(n: int, hatched: bool, seed: int) -> torch.Tensor:
    """``n`` pictures of 8 crops of 32²: smooth colour blobs, with a diagonal hatching when ``hatched``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n * 8, 3, 4, 4, generator=g), size=32, mode="bilinear")
    if hatched:
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        base = base * (0.75 + 0.25 * torch.sin((xx + yy) * 0.9))
    return base.clamp(0, 1)


def test_the_classifier_learns_the_style_and_reads_new_pictures_by_it():
    clf = CJ.PixelClassifier(pictures(4, False, 0), pictures(4, True, 1), 4, steps=80, batch=32)
    assert clf.accuracy >= CJ.HELD_OUT_FLOOR and len(clf.fold_accuracy) == 3
    # pictures it never saw: hatched ones are called target, smooth ones artist
    assert float(clf.calls(pictures(2, True, 7)).mean()) > 0.9
    assert float(clf.calls(pictures(2, False, 8)).mean()) < 0.1
    assert clf.features(pictures(1, True, 9)).shape == (8, 1)


def test_a_classifier_of_two_sets_of_one_style_is_no_better_than_chance():
    clf = CJ.PixelClassifier(pictures(4, False, 0), pictures(4, False, 1), 4, steps=80, batch=32)
    assert clf.accuracy < CJ.HELD_OUT_FLOOR  # the bench would leave it out
