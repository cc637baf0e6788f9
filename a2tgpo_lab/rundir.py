"""The output directory of a run: one run per directory, one process at a time, logs that stay parseable.

``<output_dir>/`` holds

- ``run.json``: the run's id (a random hex string made when the run starts) and what it is, so a second
  run started in the same directory is noticed instead of silently mixed in;
- ``.lock``: held (``fcntl.flock``) by the process writing the directory; a second process is refused;
- ``metrics.jsonl``, ``completions.jsonl``, ``eval.jsonl``: one JSON object per line, appended with
  :func:`append_jsonl` (a failed write, e.g. a full disk, leaves no torn line behind);
- ``checkpoint-<step>/``: see :mod:`a2tgpo_lab.checkpoint`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .errors import DiskFullError, RunDirError, disk_full

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LOG_FILES = ("metrics.jsonl", "completions.jsonl", "eval.jsonl")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_run_info(output_dir: str | Path) -> Optional[dict[str, Any]]:
    """``run.json`` of ``output_dir`` (None when there is none or it is unreadable)."""
    try:
        info = json.loads((Path(output_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("run_id"), str) else None


def holds_a_run(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` has files a run wrote: run.json, a checkpoint or a metrics log."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    return any((output_dir / name).exists() for name in (RUN_FILE, "metrics.jsonl")) or \
        any(p.name.startswith("checkpoint-") for p in output_dir.iterdir())


def clear_run(output_dir: str | Path) -> None:
    """Delete what a run wrote in ``output_dir`` (checkpoints, logs, run.json, config.json); nothing else."""
    output_dir = Path(output_dir)
    for path in output_dir.iterdir():
        if path.name.startswith("checkpoint-") and path.is_dir():
            shutil.rmtree(path)
        elif path.name in (*LOG_FILES, RUN_FILE, "config.json"):
            path.unlink()


class OutputDirLock:
    """An exclusive, re-entrant lock on ``output_dir`` held with ``flock`` (released by the OS if the process dies).

    ``with lock:`` blocks nobody: a directory locked by another process raises :class:`RunDirError` at once.
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self._handle = None
        self._depth = 0

    def __enter__(self) -> "OutputDirLock":
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock, as before
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.output_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(f"{self.output_dir} is in use by another training process (pid {holder}). Wait for "
                              "it to finish, or give this run another output_dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None


# --------------------------------------------------------------------------- JSON lines
def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append one JSON line per row; if the write fails, cut the file back to where it was.

    A full disk therefore never leaves half a line that would make the rest of the file unparseable."""
    data = memoryview("".join(json.dumps(row) + "\n" for row in rows).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:
            with contextlib.suppress(OSError):  # not every file (a device) can be truncated
                os.ftruncate(fd, size)
            if disk_full(err):
                raise DiskFullError(f"No space left on device while writing {path}. Free some space, then resume "
                                    "with resume_from_checkpoint='latest'.") from err
            raise
    finally:
        os.close(fd)


def _parse_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    """(rows, numbers of the lines that are not JSON)."""
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad.append(number)
    return rows, bad


def _warn_torn(path: Path, bad: list[int]) -> None:
    warnings.warn(f"{path}: skipped {len(bad)} line(s) that are not JSON (first: line {bad[0]}), left by a write "
                  "cut short (full disk, kill -9).", stacklevel=3)


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file; a line that is not JSON (a torn write) is skipped with a warning."""
    rows, bad = _parse_jsonl(Path(path))
    if bad:
        _warn_torn(Path(path), bad)
    return rows


def rewrite_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> int:
    """Keep only the rows of ``path`` for which ``keep(row)`` holds, and drop torn lines (with a warning);
    the file is replaced atomically. Returns how many rows were dropped (torn lines not counted)."""
    path = Path(path)
    if not path.exists():
        return 0
    rows, bad = _parse_jsonl(path)
    if bad:
        _warn_torn(path, bad)
    kept = [row for row in rows if isinstance(row, dict) and keep(row)]
    if len(kept) == len(rows) and not bad and path.read_bytes()[-1:] in (b"", b"\n"):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err):
            raise DiskFullError(f"No space left on device while rewriting {path}; free some space and retry.") from err
        raise
    return len(rows) - len(kept)
