"""The errors a user can cause or meet, shared by every layer (this is the lowest one).

Each message names the file, row, key or host at fault and says how to fix it; the command line
turns them into one line and an exit code (pipeline/run.py lists them).
"""

from __future__ import annotations

import errno
import resource
import shutil
from pathlib import Path


class DataError(ValueError):
    """Input data cannot be used; the message names the file, row or key and how to fix it."""


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the key and how to fix it."""


class CheckpointError(ValueError):
    """A saved model or training checkpoint cannot be used; the message names the file and what to do."""


class ServiceError(RuntimeError):
    """A service the run depends on (the tracking server) does not answer; the message names it."""


class StorageError(RuntimeError):
    """An output could not be written (disk full, file-size limit, read-only folder); names the path."""


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGINT, SIGTERM); like KeyboardInterrupt, no handler for
    ordinary errors catches it."""

    def __init__(self, signum: int, stage: str = ""):
        super().__init__(signum, stage)
        self.signum, self.stage = signum, stage


# How numpy, torch and SQLite report a write the storage refused, without an errno.
SHORT_WRITE = (
    " written",  # numpy: "N requested and M written"
    "failed writing",
    "write failed",
    "disk I/O error",
    "database or disk is full",
)


def storage_problem(error: BaseException, folder: Path) -> str | None:
    """Why a write under `folder` failed when the storage is to blame: a full disk or a file-size limit
    (also when the library reports a short write without an errno), a read-only or forbidden folder;
    else None (a permission error on an input elsewhere is the input's problem)."""
    number = getattr(error, "errno", None)
    if number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "disk full or file-size limit"
    filename = getattr(error, "filename", None)
    inside = filename is not None and Path(filename).resolve().is_relative_to(Path(folder).resolve())
    if number == errno.EROFS or (number in (errno.EACCES, errno.EPERM) and inside):
        return "the folder is read-only or not yours to write"
    if number is None and any(words in str(error) for words in SHORT_WRITE):
        limited = resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
        if limited or shutil.disk_usage(folder).free < 64 << 20:
            return "disk full or file-size limit"
    return None
