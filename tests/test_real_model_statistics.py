"""The intervals ``benchmarks/real_model.py`` writes into docs/results.md, on inputs whose
resampling distribution is known by hand."""

import pytest

from tests.conftest import ROOT


@pytest.fixture
def real_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import real_model

    return real_model


def test_the_length_ratio_and_its_interval(real_model):
    assert real_model.ratio_interval([300.0, 300.0], [150.0, 150.0, 150.0]) == (2.0, 2.0, 2.0)
    # A numerator of {1, 3} resamples to a mean of 1, 2 or 3 (chances 1/4, 1/2, 1/4): the 2.5% and
    # 97.5% points are the extremes; the denominator is constant.
    assert real_model.ratio_interval([1.0, 3.0], [1.0, 1.0]) == (2.0, 1.0, 3.0)
    assert real_model.ratio_interval([2.0, 2.0], [1.0, 3.0]) == (1.0, pytest.approx(2 / 3), 2.0)


def test_accuracy_and_paired_difference_intervals(real_model):
    assert real_model.bootstrap([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # the same pairs: a difference of 1 on every pair is certain
    assert real_model.paired_difference([1.0, 1.0, 0.0], [0.0, 0.0, -1.0]) == (1.0, 1.0, 1.0)
