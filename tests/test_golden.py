"""Golden file: features and oracle targets of one short clip, within a tolerance."""

from __future__ import annotations

import numpy as np

from percepnet.analysis import FEAT_COHERENCE, FEAT_LOG_ENERGY
from percepnet.constants import NB_BANDS, NB_FEATURES
from percepnet.features import compute_example
from tests.golden.make_golden import HERE, golden_pair


def test_features_and_targets_match_golden() -> None:
    ref = np.load(HERE / "clip.npz")
    clean, noisy = golden_pair()
    ex = compute_example(noisy, clean)
    assert ex.features.shape == ref["features"].shape
    assert ex.features.shape[1] == NB_FEATURES
    np.testing.assert_allclose(
        ex.features[:, FEAT_LOG_ENERGY], ref["features"][:, FEAT_LOG_ENERGY], atol=1e-4
    )
    np.testing.assert_allclose(
        ex.features[:, FEAT_COHERENCE], ref["features"][:, FEAT_COHERENCE], atol=1e-4
    )
    np.testing.assert_allclose(
        ex.features[:, 2 * NB_BANDS :], ref["features"][:, 2 * NB_BANDS :], atol=1e-4
    )
    np.testing.assert_allclose(ex.gains, ref["gains"], atol=1e-4)
    np.testing.assert_allclose(ex.strengths, ref["strengths"], atol=1e-4)


def test_targets_are_in_range_and_informative() -> None:
    clean, noisy = golden_pair()
    ex = compute_example(noisy, clean)
    for arr in (ex.gains, ex.strengths):
        assert np.isfinite(arr).all()
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    # a 5 dB mixture of voiced sound: gains spread out, the comb filter is asked for
    assert ex.gains.std() > 0.1
    assert (ex.strengths > 0.5).mean() > 0.05
