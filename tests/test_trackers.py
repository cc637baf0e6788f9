"""report_to: metrics reach the trackers under their metrics.jsonl names, at their steps."""
from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest

from a2tgpo_lab.config import ConfigError, preset
from a2tgpo_lab.trackers import normalize_report_to, scalars, tracker_callbacks


def fake_record(step: int, reward: float) -> SimpleNamespace:
    return SimpleNamespace(step=step, metrics={"step": float(step), "reward": reward, "turn/2/ig_mean": 0.1 * step,
                                               "ig/std": float("nan")})


def drive(callbacks, steps: int = 3) -> None:
    """What the trainer does: a step's record, an evaluation, the end."""
    for step in range(steps):
        for callback in callbacks:
            callback.on_step_end(None, fake_record(step, reward=step / 10))
    for callback in callbacks:
        callback.on_evaluate(None, {"step": float(steps), "eval/em": 0.75, "eval/n": 8.0})
        callback.on_train_end(None)


def test_report_to_follows_trls_convention():
    assert normalize_report_to("none") == [] and normalize_report_to(None) == []
    assert normalize_report_to("tensorboard") == ["tensorboard"]
    assert normalize_report_to("all") == ["tensorboard", "trackio", "wandb"]
    assert preset("a2tgpo").report_to == "none" and tracker_callbacks(preset("a2tgpo")) == []
    with pytest.raises(ConfigError, match="report_to.*mlflow"):
        preset("a2tgpo", report_to=["tensorboard", "mlflow"])
    assert scalars({"step": 1.0, "reward": 0.5, "ig/std": math.nan, "flag": True}) == {"reward": 0.5}


def test_tensorboard_gets_the_metrics_jsonl_names(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (in the test extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = preset("a2tgpo", report_to="tensorboard", output_dir=str(tmp_path), logging_steps=2)
    callbacks = tracker_callbacks(cfg)
    assert not (tmp_path / "tensorboard").exists()            # nothing written before the first metrics
    drive(callbacks)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"reward", "turn/2/ig_mean", "eval/em"} <= set(tags) and "ig/std" not in tags
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("reward")] == [(0, 0.0), (2, 0.2)]  # every 2nd step
    assert [(e.step, e.value) for e in events.Scalars("eval/em")] == [(3, 0.75)]


class FakeTracker:
    """Records the calls a tracker module receives (trackio's and wandb's module-level API)."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, metrics, step):
        self.calls.append(("log", dict(metrics), step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("name", ["trackio", "wandb"])
def test_trackio_and_wandb_runs(tmp_path, monkeypatch, name):
    fake = FakeTracker()
    monkeypatch.setitem(sys.modules, name, fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = preset("a2tgpo", report_to=[name], output_dir=str(tmp_path / "my_run"))
    drive(tracker_callbacks(cfg), steps=2)
    init = fake.calls[0][1]
    assert init["project"] == "my_run" and init["config"]["report_to"] == [name]
    if name == "wandb":
        assert init["mode"] == "offline" and init["dir"] == str(tmp_path / "my_run")
    assert fake.calls[1:] == [("log", {"reward": 0.0, "turn/2/ig_mean": 0.0}, 0),
                              ("log", {"reward": 0.1, "turn/2/ig_mean": 0.1}, 1),
                              ("log", {"eval/em": 0.75, "eval/n": 8.0}, 2), ("finish",)]


def test_a_missing_tracker_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)               # import wandb → ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        tracker_callbacks(preset("a2tgpo", report_to="wandb", output_dir=str(tmp_path)))
