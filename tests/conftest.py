"""Shared fixtures and checks. ``worked_example``: the batch of ALGORITHM.md §9 (one prompt, G = 3, T = 4);
``assert_same_training``: what "a resumed run equals the uninterrupted one" means in float32."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

NAN = math.nan


@pytest.fixture
def worked_example():
    """Probe probabilities, outcomes and turn counts of ALGORITHM.md §9, as the trainer passes them.

    p [3, 5] (t = 0 .. T, NaN past K_i), probe_logprob_mean = log p, outcome [3], prompt_index [3],
    num_tool_turns [3] = K_i, T = 4 (rollout 3 has 3 tool turns and its answer turn 4).
    """
    p = torch.tensor([[0.10, 0.30, 0.70, NAN, NAN],
                      [0.10, 0.15, NAN, NAN, NAN],
                      [0.10, 0.20, 0.25, 0.60, NAN]])
    return SimpleNamespace(p=p, probe_logprob_mean=p.log(), outcome=torch.tensor([1.0, 0.0, 1.0]),
                           prompt_index=torch.tensor([0, 0, 0]), num_tool_turns=torch.tensor([2, 1, 3]),
                           max_turns=4)


def assert_same_training(expected, actual, learning_rate):
    """Weights of a resumed run equal the uninterrupted run's, up to rounding that Adam amplifies.

    Not bit-exact: BLAS reduction order can differ between two runs in one process (it follows memory
    alignment on some CPUs), and Adam turns that rounding into up to ~1% of a learning-rate step on weights
    whose gradient is below its eps (rare-token embedding rows): measured 10-30 of 1.1M weights, by up to
    ~1.2e-5 at lr 1e-3. A resume that loses the optimizer state moves ~all weights, by up to ~7·lr."""
    gap = (expected - actual).abs()
    assert gap.max() < 0.1 * learning_rate, f"resumed weights differ by up to {gap.max():.2e}"
    moved = int((gap > 1e-6).sum())
    assert moved < 1e-3 * gap.numel(), f"{moved} of {gap.numel()} resumed weights differ by > 1e-6"
