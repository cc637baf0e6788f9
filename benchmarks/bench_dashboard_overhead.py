"""What the live dashboard costs a training run, measured two ways, printed side by side.

1. The callback itself: time per ``on_step_end`` call as the trainer emits it (a loop over its
   callbacks), with no callback vs with a Dashboard attached (it only stores the record).
2. The whole loop: steps per second of a loop doing a fixed CPU-bound "step" (numpy work standing in
   for rollout + update), without a dashboard vs with one whose refresher thread redraws every
   ``--interval`` seconds (this includes the redraws competing for the interpreter).

    python benchmarks/bench_dashboard_overhead.py [--calls 20000] [--steps 100] [--repeats 3]
                                                  [--step-ms 50] [--interval 0.5] [--max-busy 0.1]

The records are synthetic (``a2tgpo_lab.viz.sample_run``); no model is loaded.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


class LoopTrainer:
    """The part of the trainer the dashboard touches: callbacks, history, records, pause/resume/stop."""

    def __init__(self):
        self.callbacks, self.history, self.records = [], [], []

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def pause(self):
        pass

    resume = stop = pause

    def emit(self, event, *args):
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(self, *args)


def time_callbacks(records, calls: int, with_dashboard: bool) -> float:
    """Seconds per emitted on_step_end."""
    from a2tgpo_lab.viz import Dashboard

    trainer = LoopTrainer()
    if with_dashboard:
        Dashboard(trainer, background=False)
    started = time.perf_counter()
    for n in range(calls):
        trainer.emit("on_step_end", records[n % len(records)])
    return (time.perf_counter() - started) / calls


def fake_step(iterations: int, rng: np.random.Generator) -> None:
    """A fixed amount of CPU-bound work (matrix products), standing in for a small RL step."""
    a = rng.standard_normal((96, 96))
    for _ in range(iterations):
        a = np.tanh(a @ a.T / 96)


def calibrate(step_ms: float) -> int:
    """How many ``fake_step`` iterations take about ``step_ms`` milliseconds here."""
    rng, n = np.random.default_rng(0), 64
    while True:
        started = time.perf_counter()
        fake_step(n, rng)
        spent = time.perf_counter() - started
        if spent > 0.05:
            return max(1, int(n * step_ms / 1000 / spent))
        n *= 2


def time_loop(records, steps: int, iterations: int, with_dashboard: bool, interval: float,
              max_busy: float) -> tuple[float, int]:
    """(steps per second, dashboard redraws) of a training-like loop."""
    from a2tgpo_lab.viz import Dashboard

    trainer = LoopTrainer()
    dashboard = Dashboard(trainer, update_interval=interval, max_busy=max_busy) if with_dashboard else None
    rng = np.random.default_rng(0)
    trainer.emit("on_train_begin")
    started = time.perf_counter()
    for n in range(steps):
        fake_step(iterations, rng)
        record = records[n % len(records)]
        trainer.records.append(record)
        trainer.history.append(record.metrics)
        trainer.emit("on_step_end", record)
    elapsed = time.perf_counter() - started
    trainer.emit("on_train_end")
    return steps / elapsed, (dashboard.draw_count if dashboard else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--max-busy", type=float, default=0.1)
    parser.add_argument("--records", type=int, default=20)
    args = parser.parse_args()

    from a2tgpo_lab.viz import sample_run

    records = sample_run(n_steps=args.records)
    bare = time_callbacks(records, args.calls, with_dashboard=False)
    attached = time_callbacks(records, args.calls, with_dashboard=True)
    print(f"on_step_end per call ({args.calls} calls, {args.records} synthetic records)")
    print(f"  {'no dashboard':<28}{bare * 1e6:>10.2f} µs")
    print(f"  {'dashboard attached':<28}{attached * 1e6:>10.2f} µs   ratio {attached / bare:.1f}x")

    iterations = calibrate(args.step_ms)
    # Alternate the two settings and keep medians: the machine's load drifts during a run.
    base, live, draws = [], [], 0
    for _ in range(args.repeats):
        base.append(time_loop(records, args.steps, iterations, False, args.interval, args.max_busy)[0])
        rate, draws = time_loop(records, args.steps, iterations, True, args.interval, args.max_busy)
        live.append(rate)
    base_rate, live_rate = float(np.median(base)), float(np.median(live))
    print(f"\ntraining-like loop ({args.steps} steps of ~{args.step_ms:.0f} ms CPU work, median of {args.repeats})")
    print(f"  {'no dashboard':<28}{base_rate:>10.2f} steps/s")
    label = f"dashboard (≤{args.interval} s, busy ≤{args.max_busy:.0%})"
    print(f"  {label:<28}{live_rate:>10.2f} steps/s   "
          f"ratio {live_rate / base_rate:.2f}x   ({draws} redraws in the last run)")


if __name__ == "__main__":
    main()
