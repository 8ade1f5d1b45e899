"""The class-map argmax against numpy's, ties included."""
import numpy as np
import pytest
import torch

from excel.utils.argmax import argmax


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_argmax_matches_numpy_with_ties(dim):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (3, 5, 7, 6), generator=generator).float()   # many ties
    scores[0, :, 0, 0] = float("-inf")                                           # an all -inf column
    got = argmax(scores, dim)
    expected = np.argmax(scores.numpy(), axis=dim)                               # first maximum on ties
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)
