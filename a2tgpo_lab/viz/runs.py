"""Runs as the figures over training read them: named lists of metric rows.

A run is one of
- a run directory (``output_dir`` of a trainer: ``metrics.jsonl``, ``eval.jsonl``, ``config.json``),
- a metrics history (``trainer.history``: a list of dicts), or
- a list of StepRecords (``trainer.records``: their ``metrics``).

Several runs are a dict ``name -> run`` or a list of run directories (named by directory). One run
alone is accepted wherever several are, and is named "run".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .style import as_history


def load_run(path: str | os.PathLike) -> list[dict]:
    """The metric rows of a run directory: one per training step (``metrics.jsonl``), then one per
    periodic evaluation (``eval.jsonl``), each with its ``step``. A torn last line is skipped."""
    from ..rundir import read_jsonl

    root = Path(path)
    metrics, evals = root / "metrics.jsonl", root / "eval.jsonl"
    if not metrics.exists() and not evals.exists():
        raise FileNotFoundError(f"{root}: no metrics.jsonl or eval.jsonl here; pass a trainer's output_dir "
                                "(e.g. runs/a2tgpo) after it has trained at least one step.")
    return (read_jsonl(metrics) if metrics.exists() else []) + (read_jsonl(evals) if evals.exists() else [])


def run_config(path: str | os.PathLike) -> dict:
    """The run directory's ``config.json`` (empty if it has none)."""
    config = Path(path) / "config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def _is_run_dir(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def as_runs(runs: Any) -> dict[str, list[dict]]:
    """``{name: metric rows}`` from one run or several (see the module docstring)."""
    if isinstance(runs, dict):
        return {str(name): _rows(run, str(name)) for name, run in runs.items()}
    if _is_run_dir(runs):
        return {Path(runs).name: load_run(runs)}
    runs = list(runs)
    if runs and all(_is_run_dir(item) for item in runs):
        return {Path(item).name: load_run(item) for item in runs}
    return {"run": _rows(runs, "run")}


def _rows(run: Any, name: str) -> list[dict]:
    if _is_run_dir(run):
        return load_run(run)
    try:
        return as_history(run)
    except TypeError as error:
        raise TypeError(f"run {name!r}: {error} A run is a run directory, trainer.history or trainer.records.") \
            from None
