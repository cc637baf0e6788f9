"""Ctrl-C and SIGTERM during training: a step is applied, counted and logged whole, or not at all.

Two tools, both no-ops outside the main thread (only the main thread receives signals; a notebook's
background training thread is stopped with ``trainer.stop()`` instead):

- :func:`sigterm_as_interrupt`: while training, SIGTERM (what a cluster scheduler sends before
  preempting a job) raises :class:`Preempted`, a ``KeyboardInterrupt``, so it takes Ctrl-C's path:
  save the last complete step and stop.
- :func:`deferred_interrupts`: inside the block SIGINT and SIGTERM are held back and delivered when
  the block ends. The trainer wraps "optimizer update → step counter → log line" in it, so a
  checkpoint can never hold updated weights under the old step number.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = threading.local()


class Preempted(KeyboardInterrupt):
    """SIGTERM arrived; handled like Ctrl-C (save the last complete step, then stop)."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_preempted(signum, frame) -> None:
    raise Preempted(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Preempted` instead of ending the process."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_preempted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then deliver the first one to the handler that was in
    place before (Ctrl-C → KeyboardInterrupt). Nested blocks defer to the outermost one."""
    if not _in_main_thread() or getattr(_deferring, "active", False):
        yield
        return
    caught: list[int] = []

    def hold(signum, frame) -> None:
        if not caught:
            print(f"\n{signal.Signals(signum).name} received: finishing the current step first.", file=sys.stderr)
        caught.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in _SIGNALS}
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    if caught:
        signal.raise_signal(caught[0])
