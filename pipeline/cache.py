"""Stage output cache: one folder per (stage, key), complete or absent.

A stage writes into a temporary sibling folder; only after it returns is a manifest written and
the folder renamed to its final name in one step, so no lookup ever takes an interrupted attempt
as a result. A resumable stage (training) writes into `.partial-<key>` instead, a name the next
attempt finds however the last one ended (an exception, Ctrl-C, SIGTERM, `kill -9`, a lost
node), and resumes from the checkpoints in it. The manifest lists every output file with its size
and a content hash; a lookup checks them, so an output deleted, changed or damaged since is
produced again instead of failing a later stage, and a manifest that cannot be read means "not
cached". A lock per (stage, key) makes a second run wait for the first instead of doing the same
work, and keeps two runs from writing one partial folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data_prep.errors import ConfigError

MANIFEST = "_stage.json"
# What a runner writes into every manifest; one without them was not written by this pipeline.
MANIFEST_KEYS = ("files", "run_id", "params", "metrics", "summary")

log = logging.getLogger(__name__)


class StageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def ensure_writable(self) -> None:
        """Fail at start-up, naming the folder, when stage outputs cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cache_dir {self.root} is not writable ({exc.strerror}): point cache_dir at a folder you can "
                "write, e.g. --set cache_dir=/tmp/kronos-cache"
            ) from exc

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> dict[str, Any] | None:
        """The manifest of a complete, intact output, or None (also when a listed file is gone or changed)."""
        folder = self.path(stage, key)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            recorded = json.loads(manifest.read_text())
            missing = [name for name in MANIFEST_KEYS if name not in recorded]
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            recorded, missing = None, [f"unreadable: {exc}"]
        if recorded is None or missing or not isinstance(recorded["files"], dict):
            log.warning(
                "stage %s: the manifest %s is damaged (%s): treating the output as not cached and running "
                "the stage again",
                stage,
                manifest,
                "; ".join(missing) or "its file list is not a mapping",
            )
            return None
        damaged = [name for name, entry in recorded["files"].items() if file_entry(folder / name) != entry]
        if damaged:
            log.warning(
                "stage %s: cached output %s lost or changed %d file(s) since it was written (e.g. %s): "
                "running the stage again",
                stage,
                folder,
                len(damaged),
                damaged[:3],
            )
            return None
        return recorded

    def update(self, stage: str, key: str, **fields: Any) -> None:
        """Change fields of a complete output's manifest (e.g. the run that now holds its artifacts)."""
        manifest = self.path(stage, key) / MANIFEST
        _write_json_atomic(manifest, {**json.loads(manifest.read_text()), **fields})

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold (stage, key) for this process; another run of the same stage waits here instead of
        repeating the work."""
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{stage}-{key}", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("stage %s: another run is producing this output; waiting for it", stage)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def writing(
        self, stage: str, key: str, progress_files: tuple[str, ...] = ()
    ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield (folder to write into, manifest dict); publish both if the block succeeds.

        A resumable stage (one with `progress_files`, glob patterns) writes into `.partial-<key>`,
        which stays after any failure or kill for the next attempt to resume from; it is never taken
        as a complete output, and its progress files are dropped when it is published. Call inside
        `lock(stage, key)`.
        """
        resumable = bool(progress_files)
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".tmp-{key}-*"):
            if not _process_alive(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)
        partial = self.partial(stage, key)
        if resumable:
            working = partial
            if partial.is_dir():
                log.info("stage %s: resuming from the partial output of an earlier attempt in %s", stage, partial)
            partial.mkdir(exist_ok=True)
        else:
            shutil.rmtree(partial, ignore_errors=True)
            working = final.parent / f".tmp-{key}-{os.getpid()}"
            shutil.rmtree(working, ignore_errors=True)
            working.mkdir()
        manifest: dict[str, Any] = {"stage": stage, "key": key}
        try:
            yield working, manifest
            for pattern in progress_files:  # only a resumed attempt needs them; a model's are large
                for path in [*working.glob(pattern), *working.glob(f"{pattern}.partial")]:
                    path.unlink()
            manifest["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest["files"] = {
                str(path.relative_to(working)): file_entry(path)
                for path in sorted(working.rglob("*"))
                if path.is_file() and path.name != MANIFEST
            }
            _write_json_atomic(working / MANIFEST, manifest)
            if final.exists():  # --force: replace the old output only once the new one is whole
                retired = final.parent / f".old-{key}-{os.getpid()}"
                final.rename(retired)
                working.rename(final)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                working.rename(final)
        finally:
            if not resumable:
                shutil.rmtree(working, ignore_errors=True)

    def partial(self, stage: str, key: str) -> Path:
        """Where a resumable stage's unfinished output waits for the next attempt."""
        return self.path(stage, key).parent / f".partial-{key}"


def file_entry(path: Path) -> dict[str, Any] | None:
    """What the manifest records of one output file: its size and a hash of its contents."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    except OSError:
        return None
    return {"size": size, "blake2b": digest}


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str))
    partial.replace(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(path: Path, hash_contents: bool = True) -> str:
    """Identity of an input file or folder: contents hash, or names, sizes and mtimes.

    Folders of many large files (an existing Qlib folder) use `hash_contents=False`, the same
    rule `make` uses; a changed file then gets a new size or mtime.
    """
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        if hash_contents:
            with open(file, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "blake2b").digest())
        else:
            stat = file.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
