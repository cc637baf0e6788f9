"""Shared fixtures and checks. ``worked_example``: the batch of ALGORITHM.md §9 (one prompt, G = 3, T = 4);
``assert_same_training``: what "a resumed run equals the uninterrupted one" means in float32;
``python_sigint_handler``: Ctrl-C is Python's KeyboardInterrupt in every test."""
from __future__ import annotations

import math
import signal
import threading
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


def assert_same_training(expected, actual, learning_rate, optimizer_steps):
    """Weights of a resumed run equal the uninterrupted run's, up to rounding that Adam amplifies.

    Not bit-exact: BLAS reduction order can differ between two runs in one process (it follows memory
    alignment on some CPUs). On a weight whose gradient is itself rounding noise (a difference of nearly
    equal terms, or below Adam's eps) Adam turns that noise into up to a whole learning-rate step per
    optimizer step: measured once at 1.0·lr on a few weights after two resumed steps, while the mean gap
    stays ~1e-7. A resume that loses the optimizer state moves ~all weights, by up to ~7·lr. So: no weight
    further apart than the ``optimizer_steps`` taken after the resume could move it, and a mean gap far
    below one step."""
    gap = (expected - actual).abs()
    assert gap.max() < (optimizer_steps + 0.5) * learning_rate, f"resumed weights differ by up to {gap.max():.2e}"
    assert gap.mean() < 0.01 * learning_rate, f"resumed weights differ by {gap.mean():.2e} on average"


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Ctrl-C raises KeyboardInterrupt in every test, however pytest was started: a shell starts a
    background job with SIGINT ignored, and Python then keeps it ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
