"""Shared fixtures. ``worked_example``: the batch of ALGORITHM.md §9 (one prompt, G = 3, T = 4)."""
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
