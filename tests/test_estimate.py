"""One age from an age distribution: its median (the default, in whole years) or its mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepage.inference.video import AgeFusion
from deepage.models.heads import AGE_ESTIMATES, DexHead, create_head, point_age


def _masses(*pairs: tuple[int, float]) -> torch.Tensor:
    probs = torch.zeros(1, 101)
    for age, mass in pairs:
        probs[0, age] = mass
    return probs


def test_median_and_mean_of_known_distributions():
    skewed = _masses((10, 0.3), (20, 0.3), (60, 0.4))
    assert point_age(skewed, "median").item() == 20.0
    assert point_age(skewed, "mean").item() == pytest.approx(33.0, abs=1e-5)
    # cumulative mass exactly 1/2 at 20: the median is the smallest age that reaches half
    assert point_age(_masses((10, 0.25), (20, 0.25), (60, 0.5)), "median").item() == 20.0
    # the total need not be 1 (half of the total counts), and the batch is read row by row
    batch = torch.cat([_masses((5, 2.0), (7, 1.0)), _masses((90, 1.0))])
    assert point_age(batch, "median").tolist() == [5.0, 90.0]
    assert AGE_ESTIMATES[0] == "median"
    with pytest.raises(ValueError, match="age estimate 'mode'"):
        point_age(skewed, "mode")


def test_dex_head_answers_by_its_estimate():
    logits = torch.randn(4, 101, generator=torch.Generator().manual_seed(0))
    probs = logits.softmax(1)
    median = DexHead(8).predict(logits)
    assert torch.equal(median.age, point_age(probs, "median"))
    assert torch.all(median.age == median.age.round())  # whole years
    mean = create_head("dex", 8, estimate="mean").predict(logits)
    torch.testing.assert_close(mean.age, probs @ torch.arange(101.0))
    torch.testing.assert_close(mean.age_probs, median.age_probs)  # the distribution is the same
    with pytest.raises(ValueError, match="estimate 'middle'"):
        DexHead(8, estimate="middle")


def test_a_track_answers_by_the_models_estimate():
    p = _masses((10, 0.3), (20, 0.3), (60, 0.4))[0].numpy()
    median, mean = AgeFusion(), AgeFusion(estimate="mean")
    for fusion in (median, mean):
        fusion.add(p)
    assert median.age == 20.0 and mean.age == pytest.approx(33.0, abs=1e-4)
    assert np.allclose(median.probs, mean.probs)
    with pytest.raises(ValueError, match="estimate"):
        AgeFusion(estimate="mode")


def test_flip_averaging_reads_the_median_of_the_mean_distribution():
    from deepage.readout import average_readouts

    head = DexHead(8)
    # two views: all mass at 20, and all at 30 but for a little at 20: the mean distribution's median is 20
    a = head.read(torch.log(_masses((20, 1.0)) + 1e-9).numpy())
    b = head.read(torch.log(_masses((20, 0.2), (30, 0.8)) + 1e-9).numpy())
    both = average_readouts(a, b)
    assert (a.age.item(), b.age.item()) == (20.0, 30.0)
    assert both.age.item() == 20.0 and both.estimate == "median"  # not (20 + 30) / 2
    by_mean = create_head("dex", 8, estimate="mean")
    mean = average_readouts(by_mean.read(torch.log(_masses((20, 1.0)) + 1e-9).numpy()),
                            by_mean.read(torch.log(_masses((20, 0.2), (30, 0.8)) + 1e-9).numpy()))
    assert mean.age.item() == pytest.approx(24.0, abs=1e-3)
