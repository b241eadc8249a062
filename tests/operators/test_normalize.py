"""normalize: L2 by default, p=1 and axis, zero vectors stay zero, dtypes kept."""

from __future__ import annotations

import numpy as np
import pytest

import embedflow as ef


def test_l2_unit_length_and_float32_kept():
    vecs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    out = ef.dc(list(vecs)).normalize().to_numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), rtol=1e-6)


def test_zero_vector_stays_zero():
    out = ef.dc([np.zeros(3, np.float32)]).normalize().to_list()[0]
    assert out.tolist() == [0.0, 0.0, 0.0] and not np.isnan(out).any()


def test_p1_and_axis():
    assert ef.dc([np.array([1.0, -3.0])]).normalize(p=1).to_list()[0].tolist() == [0.25, -0.75]
    mat = np.array([[3.0, 4.0], [6.0, 8.0]])
    np.testing.assert_allclose(ef.dc([mat]).normalize().to_list()[0], [[0.6, 0.8], [0.6, 0.8]])
    np.testing.assert_allclose(ef.dc([mat]).normalize(axis=0).to_list()[0], mat / np.linalg.norm(mat, axis=0))


def test_ints_lists_and_tensors():
    import torch

    assert ef.dc([[3, 4]]).normalize().to_list()[0].dtype == np.float32
    np.testing.assert_allclose(ef.dc([torch.tensor([3.0, 4.0])]).normalize().to_list()[0], [0.6, 0.8])


def test_bad_parameters_fail_at_build_time():
    with pytest.raises(ef.ParameterError, match="p=0 must be a positive number"):
        ef.dc([1]).normalize(p=0)
    with pytest.raises(ef.ParameterError, match="axis='x' must be an integer"):
        ef.dc([1]).normalize(axis="x")
