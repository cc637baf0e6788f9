"""Atomic checkpoints that hold data only: everything needed to continue a run as if it had never stopped.

A checkpoint directory ``<output_dir>/checkpoint-<step>/`` holds

- ``policy/``: the trainable weights (the LoRA adapter, or the full model), safetensors;
- ``optimizer.safetensors``: every tensor of the optimizer state (Adam's moments, step counts);
- ``rng.safetensors``: the torch (and CUDA) random generator states;
- ``trainer_state.json``: step, run id, LR-scheduler state, the optimizer's hyper-parameters and
  non-tensor state, the Python and NumPy generator states;
- ``history.json``: the metric history;
- ``config.json``: the run's config.

Nothing is unpickled when loading: JSON and safetensors can only describe data, so a crafted
checkpoint cannot run code (``torch.load`` without ``weights_only`` can). The directory is written
as ``checkpoint-<step>.tmp`` and renamed when complete, so a crash, a kill or a full disk never leaves
a checkpoint that looks valid; a failed write removes its temporary directory.
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

from .errors import CheckpointError, DiskFullError, disk_full
from .interrupts import deferred_interrupts

FORMAT = 2  # 1 was a pickled trainer_state.pt
STATE_FILE, HISTORY_FILE = "trainer_state.json", "history.json"
OPTIMIZER_FILE, RNG_FILE = "optimizer.safetensors", "rng.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


# --------------------------------------------------------------------------- random generators
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


def _split_rng(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for safetensors, JSON-able rest) of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"]}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))})
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]}


def _join_rng(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = rest["python"]
    kind, keys, pos, has_gauss, cached = rest["numpy"]
    state = {"python": (version, tuple(internal), gauss),
             "numpy": (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
             "torch": tensors["torch"]}
    cuda = sorted((int(k.split(".")[1]), v) for k, v in tensors.items() if k.startswith("cuda."))
    if cuda:
        state["cuda"] = [v for _, v in cuda]
    return state


# --------------------------------------------------------------------------- optimizer state
def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of ``optimizer.state_dict()`` keyed ``state.<param>.<name>``, and the JSON-able rest."""
    tensors, plain = {}, {}
    for index, values in state_dict["state"].items():
        plain[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][name] = value
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state = {int(index): dict(values) for index, values in rest["state"].items()}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state[int(index)][name] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


# --------------------------------------------------------------------------- save
def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, config: dict,
                    history: list[dict], keep_last: int = 2, run_id: str = "",
                    rng: Optional[dict[str, Any]] = None) -> Path:
    """Write ``checkpoint-<step>`` atomically; then delete all but the ``keep_last`` newest checkpoints of
    the same ``run_id`` (other runs' checkpoints are never touched).

    ``rng``: the generator states to store (default: the current ones)."""
    from safetensors.torch import save_file

    from .models import save_policy

    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_policy(model, tmp / "policy")
        optimizer_tensors, optimizer_rest = _split_optimizer(optimizer.state_dict())
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
        rng_tensors, rng_rest = _split_rng(rng if rng is not None else rng_state())
        save_file(rng_tensors, str(tmp / RNG_FILE))
        state = {"format": FORMAT, "step": step, "run_id": run_id, "scheduler": scheduler.state_dict(),
                 "optimizer": optimizer_rest, "rng": rng_rest}
        (tmp / STATE_FILE).write_text(json.dumps(state, default=_plain))
        (tmp / HISTORY_FILE).write_text(json.dumps(history, default=_plain))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        with deferred_interrupts():  # the two renames of a replaced checkpoint happen together
            _replace_dir(tmp, final)
    except BaseException as err:  # a second Ctrl-C or a full disk: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(err):
            raise DiskFullError(f"No space left on device while writing checkpoint-{step} to {output_dir}. Free "
                                "some space; the newest complete checkpoint there is still intact.") from err
        raise
    for old in list_checkpoints(output_dir, run_id=run_id)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _plain(value: Any) -> Any:
    """JSON for the numpy / torch scalars that end up in metrics and optimizer settings."""
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


# --------------------------------------------------------------------------- find
def checkpoint_run_id(path: str | Path) -> Optional[str]:
    """The run id stored in a checkpoint (None when unreadable or written before run ids existed)."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def list_checkpoints(output_dir: str | Path, run_id: Optional[str] = None) -> list[Path]:
    """Complete checkpoint directories in ``output_dir`` (only run ``run_id``'s when given), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if run_id is None or checkpoint_run_id(p) == run_id]


def latest_checkpoint(output_dir: str | Path, run_id: Optional[str] = None) -> Optional[Path]:
    checkpoints = list_checkpoints(output_dir, run_id)
    return checkpoints[-1] if checkpoints else None


# --------------------------------------------------------------------------- load
def read_checkpoint_config(path: str | Path) -> dict:
    """The config a checkpoint was trained with."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: cannot read the checkpoint's config ({err}); the checkpoint is "
                              "incomplete or corrupted.") from None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> tuple[int, list[dict], str]:
    """Restore weights, optimizer, scheduler and RNG states in place; return (step, history, run id).

    Raises :class:`CheckpointError` naming the file when the checkpoint is incomplete, corrupted,
    unsafe (a pickle) or holds non-finite weights. Everything except the policy weights is read and
    checked before anything is changed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import load_policy_weights

    path = Path(path)
    if (path / "trainer_state.pt").exists() and not (path / STATE_FILE).exists():
        raise CheckpointError(f"{path / 'trainer_state.pt'} was written by an older a2tgpo_lab as a pickle, which "
                              "can run code when loaded, so it is not read. Start a new run; its policy/ weights "
                              "still load as model_name_or_path.")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory; point resume_from_checkpoint at a "
                              "checkpoint-<step> directory or 'latest'.")
    current = None
    try:
        current = path / STATE_FILE
        state = json.loads(current.read_text())
        current = path / HISTORY_FILE
        history = json.loads(current.read_text())
        current = path / OPTIMIZER_FILE
        optimizer_state = _join_optimizer(load_file(str(current)), state["optimizer"])
        current = path / RNG_FILE
        rng = _join_rng(load_file(str(current)), state["rng"])
        step, run_id, scheduler_state = int(state["step"]), str(state.get("run_id", "")), state["scheduler"]
    except FileNotFoundError:
        raise CheckpointError(f"{current} is missing: {path} is not a complete checkpoint. Resume from another "
                              "checkpoint-<step> directory, or 'latest'.") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as err:
        raise CheckpointError(f"{current} is corrupted ({type(err).__name__}: {err}). Resume from an older "
                              "checkpoint-<step> directory.") from None
    try:
        load_policy_weights(model, path / "policy")
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{path / 'policy'}: the weights cannot be loaded ({err}).") from None
    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"{path / 'policy'} holds NaN/inf weights (e.g. {bad[0]}): the run had diverged "
                              "before it was saved. Resume from an older checkpoint with a lower learning_rate.")
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path / OPTIMIZER_FILE} does not fit this model's trainable parameters ({err}); "
                              "resume with the model settings the run was trained with.") from None
    set_rng_state(rng)
    return step, list(history), run_id
