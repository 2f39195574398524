"""Files that survive faults: atomic writes, stale-temporary sweeps and checked ``.npz`` archives.

Writers put the data in a temporary file beside the target (``.{name}.tmp.{host}.{pid}.{token}``),
``fsync`` it, rename it over the target and ``fsync`` the directory, so readers see either the
old file or the complete new one. A failed write (any exception, ``KeyboardInterrupt`` included)
removes its temporary file; temporaries of the same target left by killed processes (their pid is
gone on this host, or they are older than ``STALE_SECONDS``) are removed by the next successful
write of that target. ``read_npz`` reads a whole archive and turns every way a file can be damaged
(empty, truncated, not a zip, a flipped byte) into a ``ValueError`` naming the path; a manifest
(``array_manifest``) records each array's shape, dtype and CRC-32 so that readers can tell a
dropped or altered array from a good one (``check_manifest``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import socket
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
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


# ---------------------------------------------------------------------------- checked archives
def checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes in C order."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return zlib.crc32(flat.view(np.uint8)) if flat.size else 0


def array_manifest(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """``{name: {"shape", "dtype", "crc32"}}`` of host arrays, for ``check_manifest``."""
    return {name: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.str,
                   "crc32": checksum(np.asarray(a))} for name, a in arrays.items()}


def check_manifest(path: Path, what: str, arrays: Mapping[str, np.ndarray],
                   manifest: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming ``path`` unless ``arrays`` are exactly those listed."""
    listed = manifest if isinstance(manifest, Mapping) else {}
    missing = sorted(set(listed) - set(arrays))
    extra = sorted(set(arrays) - set(listed))
    if missing or extra or not listed:
        raise ValueError(f"{what} file {path} is damaged: its manifest lists arrays "
                         f"{sorted(listed)} but it holds {sorted(arrays)}")
    for name, entry in listed.items():
        array = arrays[name]
        try:
            shape, dtype, crc = tuple(entry["shape"]), entry["dtype"], int(entry["crc32"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{what} file {path} is damaged: manifest entry {name!r} is "
                             f"malformed ({err!r})") from None
        if array.shape != shape or array.dtype.str != dtype:
            raise ValueError(f"{what} file {path} is damaged: array {name!r} has shape "
                             f"{array.shape} and dtype {array.dtype.str}, the manifest says "
                             f"{shape} and {dtype}")
        if checksum(array) != crc:
            raise ValueError(f"{what} file {path} is damaged: array {name!r} fails its "
                             f"checksum (CRC-32 {checksum(array)}, saved {crc})")


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read and checked in full.

    Raises ``FileNotFoundError`` when there is no file, and otherwise a ``ValueError`` (or an
    ``OSError`` for a failing device) naming the path and the problem: empty, a ``.npy`` or text
    file, a truncated or damaged zip, a member whose size or CRC does not match its header.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} path {path} is a directory, not a file")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if not head:
            raise ValueError(f"{what} file {path} is empty (0 bytes); it was never written "
                             f"completely: save it again")
        if head.startswith(b"\x93NUMPY"):
            raise ValueError(f"{what} file {path} is a single .npy array, not an .npz archive")
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise ValueError(f"{what} file {path} is not an .npz (zip) archive: it starts with "
                             f"{head!r}")
        try:
            with zipfile.ZipFile(fh) as archive:
                listed, counted = len(archive.infolist()), _entries_in_end_record(fh)
                if counted is not None and counted != listed:
                    raise ValueError(f"its end record counts {counted} arrays but its directory "
                                     f"lists {listed}")
                return _read_members(archive)
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: a seek to a damaged offset
                raise OSError(err.errno, f"cannot read {what} file {path}: {err}") from err
            raise ValueError(f"{what} file {path} is truncated or damaged: {err}") from err
        except Exception as err:  # zipfile and numpy raise many kinds for a damaged file
            detail = str(err)[:200] or "unexpected end of data"
            raise ValueError(f"{what} file {path} is truncated or damaged: "
                             f"{type(err).__name__}: {detail}") from err


def _entries_in_end_record(fh: Any) -> int | None:
    """The entry count of the zip's end-of-central-directory record (``None``: not found).

    ``zipfile`` stops listing members where a damaged directory entry ends early, silently; this
    count, stored apart from the entries, tells such a file from a good one.
    """
    size = fh.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    count = int.from_bytes(tail[pos + 10:pos + 12], "little")
    return None if count == 0xFFFF else count  # 0xFFFF: the count lives in the zip64 record


def _read_members(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename!r} is not an .npy array")
        name = info.filename[:-4]
        if name in arrays:
            raise ValueError(f"member {info.filename!r} appears twice")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ValueError(f"member {info.filename!r}: stored size {info.compress_size} "
                             f"differs from its size {info.file_size}")
        with archive.open(info) as member:
            arrays[name] = _read_npy(member, info)
    return arrays


def _read_npy(member: Any, info: zipfile.ZipInfo) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(member)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
    shape, fortran_order, dtype = readers[version](member)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects (refused)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if member.tell() + count * dtype.itemsize != info.file_size:
        raise ValueError(f"member {info.filename!r}: header says shape {shape} of {dtype} "
                         f"({count * dtype.itemsize} bytes) but the member holds "
                         f"{info.file_size - member.tell()} bytes of data")
    flat = np.empty(count, dtype=dtype)
    view = memoryview(flat.view(np.uint8)) if flat.nbytes else memoryview(b"")
    done = 0
    while done < flat.nbytes:
        got = member.readinto(view[done:done + _READ_CHUNK])
        if not got:
            raise EOFError(f"member {info.filename!r} ends after {done} of {flat.nbytes} bytes")
        done += got
    if member.read(1):  # also makes zipfile check the member's CRC-32
        raise ValueError(f"member {info.filename!r} has bytes after its data")
    return flat.reshape(shape, order="F" if fortran_order else "C")
