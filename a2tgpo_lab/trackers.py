"""Metrics to the experiment trackers people use, in TRL's convention: ``report_to``.

    cfg = preset("a2tgpo", report_to=["tensorboard"])      # or "trackio", "wandb", "all", "none"

Every training step's ``record.metrics`` and every evaluation's metrics go to each tracker under the
same names as in ``metrics.jsonl`` / ``eval.jsonl`` (``reward``, ``clip_ratio/region_mean``,
``turn/2/ig_mean``, ``eval/em`` ...), at the step they belong to, every ``logging_steps`` steps.

- ``tensorboard``: event files in ``<output_dir>/tensorboard`` (``torch.utils.tensorboard``; needs
  ``pip install tensorboard``), view with ``tensorboard --logdir <output_dir>/tensorboard``;
- ``trackio``: local-first (a SQLite database under ``~/.cache/huggingface/trackio``), project =
  the output directory's name; view with ``trackio show``;
- ``wandb``: Weights & Biases, **offline** unless ``WANDB_MODE`` says otherwise (files under
  ``<output_dir>/wandb``; upload later with ``wandb sync``).

Each is a trainer callback (``on_step_end`` / ``on_evaluate`` / ``on_train_end``) that
:class:`~a2tgpo_lab.trainer.A2TGPOTrainer` adds for the names in ``cfg.report_to``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "trackio", "wandb")
_EXTRAS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def normalize_report_to(report_to: Any) -> list[str]:
    """``report_to`` as a list of tracker names: a name, a list of names, ``"none"`` / None / [] (no
    tracker) or ``"all"`` (every tracker). A ValueError names an unknown entry."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else report_to
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"A2TGPOConfig.report_to={report_to!r} must be a tracker name or a list of them "
                         f"({list(TRACKERS)}, 'all' or 'none').")
    if "all" in names:
        return list(TRACKERS)
    unknown = [name for name in names if name not in (*TRACKERS, "none")]
    if unknown:
        raise ValueError(f"A2TGPOConfig.report_to has unknown tracker(s) {unknown}; choose from {list(TRACKERS)}, "
                         "'all' or 'none'.")
    return [name for name in dict.fromkeys(names) if name != "none"]


def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics dict (trackers take scalars; NaN is skipped, as in metrics.jsonl)."""
    return {key: float(value) for key, value in metrics.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


class TrackerCallback:
    """Base of the tracker callbacks: sends step and eval metrics to :meth:`log` every ``logging_steps``.

    The tracker package is imported when the callback is made (a missing one fails before training);
    its run starts at the first metrics (nothing is written to ``output_dir`` before the trainer's)."""

    name = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.every = max(1, int(getattr(cfg, "logging_steps", 1)))
        self.started = False

    def start(self) -> None:
        """Open the tracker's run."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the tracker's run."""

    def _run_identity(self) -> dict[str, Any]:
        """How a hosted tracker names the run: project = the output folder's name, run = the preset (or
        estimator), with the whole config attached."""
        return dict(project=self.output_dir.resolve().name, config=self.cfg.to_dict(),
                    name=self.cfg.preset_name or self.cfg.advantage_estimator)

    def _send(self, metrics: dict[str, float], step: int) -> None:
        if not self.started:
            self.start()
            self.started = True
        self.log(metrics, step)

    def on_step_end(self, trainer: Any, record: Any) -> None:
        step = int(record.step)
        if step % self.every == 0:
            self._send(scalars(record.metrics), step)

    def on_evaluate(self, trainer: Any, metrics: dict) -> None:
        evals = {key: value for key, value in scalars(metrics).items() if key.startswith("eval/")}
        if evals:
            self._send(evals, int(metrics.get("step", getattr(trainer, "global_step", 0))))

    def on_train_end(self, trainer: Any) -> None:
        if self.started:
            self.close()
            self.started = False


def _import(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"report_to includes {name!r} but it is not installed: pip install {_EXTRAS[name]} "
                          f"(or the a2tgpo_lab[trackers] extra), or remove it from report_to.") from error


class TensorBoardCallback(TrackerCallback):
    name = "tensorboard"

    def __init__(self, cfg):
        super().__init__(cfg)
        _import("tensorboard")
        self.log_dir = self.output_dir / "tensorboard"
        self.writer = None

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class TrackioCallback(TrackerCallback):
    name = "trackio"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.trackio = _import("trackio")

    def start(self) -> None:
        self.trackio.init(**self._run_identity())

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


class WandbCallback(TrackerCallback):
    name = "wandb"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.wandb = _import("wandb")
        self.run = None

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(**self._run_identity(), dir=str(self.output_dir),
                                   mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


CALLBACKS = {"tensorboard": TensorBoardCallback, "trackio": TrackioCallback, "wandb": WandbCallback}


def tracker_callbacks(cfg) -> list[TrackerCallback]:
    """One callback per tracker named in ``cfg.report_to`` (none by default)."""
    return [CALLBACKS[name](cfg) for name in normalize_report_to(getattr(cfg, "report_to", None))]
