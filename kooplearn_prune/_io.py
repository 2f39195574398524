"""Files that survive faults: atomic writes, stale-temporary sweeps and checked ``.npz`` archives.

Writers put the data in a temporary file beside the target (``.{name}.tmp.{host}.{pid}.{token}``),
``fsync`` it, rename it over the target and ``fsync`` the directory, so readers see either the
old file or the complete new one. A failed write (any exception, ``KeyboardInterrupt`` included)
removes its temporary file; temporaries of the same target left by killed processes (their pid is
gone on this host, or they are older than ``STALE_SECONDS``) are removed by the next successful
write of that target. Checked ``.npz`` archives (a manifest of checksums, read back with every way a
file can be damaged reported) live in ``_archive``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

STALE_SECONDS = 6 * 3600  # a temporary file this old is removed whoever wrote it
_READ_CHUNK = 1 << 22
_LEGACY_TEMP = re.compile(r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?\.tmp")  # before pid-stamped names
_TEMP = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}(\.[A-Za-z0-9]+)?")


def _host_tag() -> str:
    tag = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24]
    return tag or "host"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to ``path``."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {target}: directory {directory} does not exist")
    while True:
        tmp = directory / (f"{_temp_prefix(target)}{_host_tag()}.{os.getpid()}."
                           f"{secrets.token_hex(4)}{suffix}")
        try:  # the usual file mode (0666 less the umask), created by us alone
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync(directory, directory=True)
    sweep_stale_temps(target)


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` to disk; for a directory, where the platform allows it."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # e.g. Windows cannot open a directory
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on a directory
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of target ``path`` whose writer is gone; return what was removed.

    A temporary is stale when its pid is not alive on this host (POSIX only), or when it is older
    than ``STALE_SECONDS``; this process's own temporaries are left to their writer.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    prefix, host, now = _temp_prefix(target), _host_tag(), time.time()
    legacy_prefix = f".{target.name}."
    removed = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            match = _TEMP.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
            legacy = match is None and name.startswith(legacy_prefix) and \
                _LEGACY_TEMP.fullmatch(name[len(legacy_prefix):]) is not None
            if match is None and not legacy:
                continue
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            except OSError:
                continue
            dead = match is not None and os.name == "posix" and match["host"] == host and \
                int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
            if old or dead:
                with contextlib.suppress(OSError):
                    os.remove(entry.path)
                    removed.append(Path(entry.path))
    return removed


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save host arrays as an uncompressed ``.npz`` file, atomically."""
    target = Path(path)
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return target


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
