"""Checked ``.npz`` archives: a manifest of checksums on save, every kind of damage named on load.

``save_npz_checked`` writes arrays atomically (``_io.save_npz_atomic``) with a manifest in the
zip's comment: the file format, its version and each array's shape, dtype and CRC-32 (a manifest
too long for a comment, over 64 KiB, goes in a ``__manifest__`` member instead), so ``np.load``
still sees exactly the saved arrays. ``read_npz_checked`` reads every array back in full and
turns each way a file can be damaged (empty, truncated, not a zip, a flipped byte, a dropped or
altered array) into a ``ValueError`` naming the path. Files without a manifest (format version 1,
written before it existed) are still read, checked for structure only.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, save_npz_atomic

__all__ = ["save_npz_checked", "read_npz_checked", "read_npz", "array_manifest", "checksum",
           "MANIFEST_MEMBER"]

MANIFEST_MEMBER = "__manifest__"
_COMMENT_MAX = 0xFFFF
_READ_CHUNK = 1 << 22


def save_npz_checked(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], file_format: str,
                     version: int) -> Path:
    """Save host arrays atomically with a manifest that ``read_npz_checked`` verifies."""
    if MANIFEST_MEMBER in arrays:
        raise ValueError(f"cannot save an array named {MANIFEST_MEMBER!r}: the name is reserved "
                         f"for the file's manifest")
    manifest = json.dumps({"format": file_format, "format_version": version,
                           "arrays": array_manifest(arrays)}, separators=(",", ":")).encode()
    if len(manifest) > _COMMENT_MAX:
        return save_npz_atomic(path, {**arrays, MANIFEST_MEMBER: np.array(manifest.decode())})
    target = Path(path)
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        with zipfile.ZipFile(tmp, "a") as archive:  # rewrites only the end records
            archive.comment = manifest
    return target


def read_npz_checked(path: str | os.PathLike, what: str, file_format: str,
                     max_version: int) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of a file written by ``save_npz_checked`` and its format version, verified.

    Version 1 (no manifest) is returned as read; otherwise the manifest must name
    ``file_format``, a version up to ``max_version``, and exactly the arrays found, each with
    its shape, dtype and CRC-32. Every failure is a ``ValueError`` naming ``path``.
    """
    path = Path(path)
    arrays, comment = read_npz(path, what, with_comment=True)
    if comment:
        text = comment.decode("utf-8", errors="replace")
    elif MANIFEST_MEMBER in arrays:
        member = arrays.pop(MANIFEST_MEMBER)
        text = str(member) if member.shape == () and member.dtype.kind == "U" else ""
    else:
        return arrays, 1
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), str):
        raise ValueError(f"{what} file {path} is damaged: its manifest is not readable")
    if manifest["format"] != file_format:
        raise ValueError(f"{path} is not a {what} file: its manifest says it is a "
                         f"{manifest['format']!r} file; read it with its own loader")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 2:
        raise ValueError(f"{what} file {path} is damaged: its manifest has no valid format "
                         f"version ({version!r})")
    if version > max_version:
        raise ValueError(f"{what} file {path} has format version {version}; this "
                         f"kooplearn_prune reads up to {max_version}: upgrade kooplearn_prune")
    check_manifest(path, what, arrays, manifest.get("arrays"))
    return arrays, version


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


def read_npz(path: str | os.PathLike, what: str, *, with_comment: bool = False) -> Any:
    """Every array of the ``.npz`` file ``path``, read and checked in full (and, with
    ``with_comment``, the zip's comment: ``(arrays, comment)``).

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
                arrays = _read_members(archive)
                return (arrays, archive.comment) if with_comment else arrays
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
