"""Errors a user can fix, as opposed to bugs.

Every exception class here derives from :class:`UserError`. The command line prints a ``UserError``
as one message (no traceback) and exits with status 2; ``--debug`` shows the traceback. The message
must name the field, file or row at fault and say what to do about it.

Each class also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """A problem with the user's input, files or machine; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class DataError(UserError, ValueError):
    """A question, corpus or config file cannot be read; the message names the file and row."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the run needs does not exist."""


class ModelError(UserError, OSError):
    """A model or tokenizer cannot be loaded from the given path or Hub id."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is incomplete, corrupted, unsafe, or from another run or config."""


class RunDirError(UserError, RuntimeError):
    """The output directory is in use by another process or holds another run."""


class TrainingCollapsed(UserError, RuntimeError):
    """Training cannot usefully continue (non-finite weights, nothing but malformed rollouts)."""


class DiskFullError(UserError, OSError):
    """The disk filled up while writing; nothing half-written was left behind."""


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` is the operating system saying the disk (or quota) is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
