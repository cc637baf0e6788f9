"""Atomic checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint directory ``<output_dir>/checkpoint-<step>/`` holds

- ``policy/``: the trainable weights (the LoRA adapter, or the full model), safetensors;
- ``trainer_state.pt``: optimizer and LR-scheduler state, RNG states, step, metric history;
- ``config.json``: the run's config.

It is written to ``checkpoint-<step>.tmp`` first and renamed when complete, so a crash mid-write never
leaves a checkpoint that looks valid; :func:`latest_checkpoint` ignores ``.tmp`` leftovers.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    """The state of every random number generator a step touches."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, config: dict,
                    history: list[dict], keep_last: int = 2) -> Path:
    """Write ``checkpoint-<step>`` atomically and delete all but the ``keep_last`` newest."""
    from .models import save_policy

    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_policy(model, tmp / "policy")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "history": history}, tmp / "trainer_state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore weights, optimizer, scheduler and RNG states in place; return (step, history)."""
    from .models import load_policy_weights

    path = Path(path)
    state_file = path / "trainer_state.pt"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.pt); "
                                f"point resume_from_checkpoint at a checkpoint-<step> directory or 'latest'.")
    load_policy_weights(model, path / "policy")
    state = torch.load(state_file, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])
