"""Files under faults: killed saves, a full disk under the disk-backed recorder, damaged archives.

The killed-save and full-disk cases run in child processes, so that a process killed mid-write is
real and a ``SIGBUS`` would show as a failed exit code instead of killing pytest. The full-disk
cases mount a small tmpfs, which needs root; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kooplearn_prune import _archive, _io
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.nn import MLP, Linear, Sequential
from kooplearn_prune.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[1]


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def temporaries(directory: Path) -> list[str]:
    return sorted(f for f in os.listdir(directory) if ".tmp" in f)


# =========================================================================== killed saves
SAVER = """
    import itertools, sys
    import numpy as np
    from kooplearn_prune.nn import MLP, Linear, Sequential
    from kooplearn_prune.trajectory import Trajectory
    directory, first = sys.argv[1], int(sys.argv[2])
    SIZES = [784, 1000, 1000, 10]
    base = np.arange(200 * 40_000, dtype=np.float32).reshape(200, 40_000)  # 32 MB
    model = MLP(SIZES, seed=0)  # 7 MB
    print("ready", flush=True)
    for version in itertools.count(first):
        for p in model.parameters():
            p.data = np.full(p.shape, version, dtype=np.float32)
        for _ in range(3):
            model.save(f"{directory}/model.npz")
        Trajectory(base + version, np.arange(200) + version).save(f"{directory}/traj.npz")
"""
BASE = np.arange(200 * 40_000, dtype=np.float32).reshape(200, 40_000)


def check_saved(directory: Path) -> None:
    """Both targets load, checksums verified, and hold one whole version each."""
    traj = Trajectory.load(directory / "traj.npz")
    version = int(traj.steps[0])
    np.testing.assert_array_equal(traj.steps, np.arange(200) + version)
    np.testing.assert_array_equal(traj.snapshots, BASE + version)
    model = MLP([784, 1000, 1000, 10]).load(directory / "model.npz")
    values = {float(np.unique(np.asarray(p.data))[0]) for p in model.parameters()}
    assert len(values) == 1 and all(np.unique(np.asarray(p.data)).size == 1
                                    for p in model.parameters())


def kill_inside_a_save(child: subprocess.Popen, directory: Path, target: str) -> None:
    """SIGKILL ``child`` as soon as its temporary file for ``target`` exists."""
    mark = f".{target}.tmp."
    deadline = time.monotonic() + 30
    while not any(f.startswith(mark) and f".{child.pid}." in f for f in os.listdir(directory)):
        assert time.monotonic() < deadline, f"the child never started saving {target}"
    child.send_signal(signal.SIGKILL)


@pytest.mark.skipif(os.name != "posix", reason="kills its child with SIGKILL")
def test_killed_saves_keep_the_target_whole_and_the_next_save_sweeps_their_temporaries(tmp_path):
    Trajectory(BASE - 1, np.arange(200) - 1).save(tmp_path / "traj.npz")
    model = MLP([784, 1000, 1000, 10], seed=0)
    for p in model.parameters():
        p.data = np.full(p.shape, -1.0, dtype=np.float32)
    model.save(tmp_path / "model.npz")
    rng = random.Random(12)
    orphans: set[str] = set()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # four kills at random times, then one inside a state-dict save, one inside a trajectory save
    for kill, when in enumerate(["random"] * 4 + ["model.npz", "traj.npz"]):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SAVER), str(tmp_path),
                                  str(1000 * kill)], env=env, stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        if when == "random":
            time.sleep(rng.uniform(0.0, 0.6))
            child.send_signal(signal.SIGKILL)
        else:
            kill_inside_a_save(child, tmp_path, when)
        child.wait()
        child.stdout.close()
        check_saved(tmp_path)  # the previous version or a newer one, never a partial file
        orphans.update(f.split(".tmp.")[0] for f in temporaries(tmp_path))
    assert orphans == {".model.npz", ".traj.npz"}  # both kinds of save were killed midway
    assert any(f.startswith(".traj.npz.tmp.") for f in temporaries(tmp_path))
    Trajectory(BASE + 7, np.arange(200) + 7).save(tmp_path / "traj.npz")
    model.save(tmp_path / "model.npz")
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "traj.npz"]


@pytest.mark.skipif(os.name != "posix", reason="pids are checked for liveness on POSIX only")
def test_the_sweep_removes_dead_writers_temporaries_and_keeps_live_ones(tmp_path):
    target = tmp_path / "results.json"
    host = _io._host_tag()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".results.json.tmp.{host}.{dead.pid}.0123abcd",
        "alive": f".results.json.tmp.{host}.{os.getppid()}.0123abcd",
        "other_host": f".results.json.tmp.elsewhere.{dead.pid}.0123abcd",
        "old_other_host": ".results.json.tmp.elsewhere.1.0123abcd.npz",
        "old_legacy": ".results.json.k2j4_x9a.tmp",
        "other_target": f".other.json.tmp.{host}.{dead.pid}.0123abcd",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    old = time.time() - _io.STALE_SECONDS - 60
    for key in ("old_other_host", "old_legacy"):
        os.utime(tmp_path / names[key], (old, old))
    _io.write_json_atomic(target, {"ok": True})
    left = set(os.listdir(tmp_path))
    assert left == {"results.json", names["alive"], names["other_host"], names["other_target"]}
    assert json.loads(target.read_text()) == {"ok": True}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files from directories "
                    "by /proc/self/fd")
def test_the_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "fsync", fsync)
    monkeypatch.setattr(_io.os, "replace", replace)
    _io.write_text_atomic(tmp_path / "a.txt", "hello")
    assert events == [("fsync", "file"), ("replace", "a.txt"), ("fsync", "dir")]


def test_a_failed_write_removes_its_temporary_at_once(tmp_path):
    (tmp_path / "x.txt").write_text("old")
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)), _io.atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise error
    assert os.listdir(tmp_path) == ["x.txt"] and (tmp_path / "x.txt").read_text() == "old"


# =========================================================================== full disk
@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, mounted for the test and unmounted after it (root only)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


FULL_DISK = """
    import errno, json, os, shutil, sys
    from collections import namedtuple
    import numpy as np
    from kooplearn_prune import recording
    from kooplearn_prune.nn import MLP, Linear, Sequential
    from kooplearn_prune.optim import SGD
    from kooplearn_prune.recording import TrajectoryRecorder
    from kooplearn_prune.training import Callback, Trainer

    disk = sys.argv[1]
    rows_bytes = 4810 * 4  # MLP([64, 64, 10]): n = 4810 float32
    out = {}

    def data(steps):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8 * steps, 64)).astype(np.float32)
        return x, rng.integers(0, 10, 8 * steps)

    class Steps(Callback):
        count = 0
        def on_step_end(self, trainer):
            Steps.count += 1

    def error(fn):
        try:
            fn()
        except OSError as err:
            return {"errno": err.errno, "message": str(err)}
        return None

    # capacity that does not fit: an error at construction, no file
    model = MLP([64, 64, 10], seed=0)
    out["capacity"] = error(lambda: TrajectoryRecorder(model, storage="disk", directory=disk,
                                                       capacity=1000))
    out["capacity_files"] = os.listdir(disk)

    # no capacity: the fit knows the size (501 rows) and fails before its first step
    before = [np.array(p.data) for p in model.parameters()]
    rec = TrajectoryRecorder(model, storage="disk", directory=disk)
    trainer = Trainer(model, SGD(model, lr=0.01), callbacks=[rec, Steps()], progress=False)
    out["fit"] = error(lambda: trainer.fit(data(500), epochs=1, batch_size=8, eval_data=None))
    out["fit_steps"] = Steps.count
    out["fit_params_unchanged"] = all(np.array_equal(a, np.array(p.data))
                                      for a, p in zip(before, model.parameters()))
    out["fit_files"] = os.listdir(disk)

    # reserved space, then the disk fills up: recording still works (no SIGBUS), rows exact
    rec = TrajectoryRecorder(model, storage="disk", directory=disk, capacity=150,
                             record_updates=True)
    ref = TrajectoryRecorder(model, record_updates=True)
    with open(os.path.join(disk, "filler"), "wb") as fh:
        try:
            while True:
                fh.write(b"x" * 65536)
                fh.flush()
        except OSError as err:
            out["filler_errno"] = err.errno
    Trainer(model, SGD(model, lr=0.01), callbacks=[rec, ref], progress=False).fit(
        data(149), epochs=1, batch_size=8, eval_data=None)
    out["recorded"] = len(rec)
    same = lambda: all(np.array_equal(getattr(rec.trajectory(), k), getattr(ref.trajectory(), k))
                       for k in ("snapshots", "updates", "steps"))
    out["recorded_equal"] = same()
    kept = sorted(os.listdir(disk))

    # a growth that does not fit: an error, the rows kept, no partial file
    out["growth"] = error(rec._buffer.next_row)
    out["growth_rows_equal"] = same() and len(rec) == 150
    out["growth_files_same"] = sorted(os.listdir(disk)) == kept

    # the same when the free-space check is fooled: the allocation itself fails, cleanly
    Usage = namedtuple("Usage", "total used free")
    real_usage = shutil.disk_usage
    shutil.disk_usage = lambda path: Usage(1 << 40, 0, 1 << 40)
    out["growth_alloc"] = error(rec._buffer.next_row)
    out["growth_alloc_rows_equal"] = same() and len(rec) == 150
    out["growth_alloc_files_same"] = sorted(os.listdir(disk)) == kept

    # and where fallocate is unsupported: zeros are written, and fail as an OSError
    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "not supported")
    os.posix_fallocate = unsupported
    out["zeros"] = error(lambda: TrajectoryRecorder(model, storage="disk", directory=disk,
                                                    capacity=400))
    out["zeros_files_same"] = sorted(os.listdir(disk)) == kept
    shutil.disk_usage = real_usage
    print(json.dumps(out))
"""


def test_a_full_disk_is_an_early_oserror_never_a_signal(small_disk):
    done = run_child(FULL_DISK, str(small_disk))
    assert done.returncode == 0, f"child exited {done.returncode}: {done.stderr[-2000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for case in ("capacity", "fit"):
        assert out[case] is not None, f"{case}: no OSError"
        assert out[case]["errno"] == 28 and str(small_disk) in out[case]["message"]
        assert "bytes" in out[case]["message"] and "need" in out[case]["message"]
        assert "free" in out[case]["message"]
    assert "19240" in out["capacity"]["message"]  # 1000 rows of 19240 bytes (+ header)
    assert out["capacity_files"] == [] and out["fit_files"] == []
    assert out["fit_steps"] == 0 and out["fit_params_unchanged"]
    assert out["filler_errno"] == 28
    assert out["recorded"] == 150 and out["recorded_equal"]
    for case in ("growth", "growth_alloc", "zeros"):
        assert out[case] is not None and out[case]["errno"] == 28, (case, out[case])
        assert str(small_disk) in out[case]["message"]
        assert out[f"{case}_files_same"]
    assert "bytes" in out["growth_alloc"]["message"] and ".npy" in out["growth_alloc"]["message"]
    assert out["growth_rows_equal"] and out["growth_alloc_rows_equal"]


# =========================================================================== damaged archives
def saved_trajectory(path: Path) -> Trajectory:
    rng = np.random.default_rng(0)
    traj = Trajectory(rng.standard_normal((6, 12)).astype(np.float32), [0, 2, 4, 6, 8, 10],
                      ParamLayout(("w", "b"), ((3, 3), (3,)), (True, False)),
                      gradients=rng.standard_normal((6, 12)).astype(np.float32),
                      metadata={"optimizer": "sgd", "lr": 0.1, "every": 2})
    traj.save(path)
    return traj


def same_trajectory(a: Trajectory, b: Trajectory) -> bool:
    return (np.array_equal(a.snapshots, b.snapshots) and np.array_equal(a.steps, b.steps)
            and b.gradients is not None and np.array_equal(a.gradients, b.gradients)
            and b.updates is None and a.layout == b.layout and a.metadata == b.metadata)


def damaged_versions(blob: bytes) -> list[tuple[str, bytes]]:
    """Empty, text, .npy, truncations, and flipped bytes: all of the zip's directory and end
    record, every 13th byte elsewhere (local headers, .npy headers, array data)."""
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    cases = [("empty", b""), ("text", b"step,loss\n0,1.0\n"), ("npy", npy.getvalue())]
    cases += [(f"truncated at {n}", blob[:n]) for n in (1, 4, 30, 200, len(blob) // 2,
                                                        len(blob) - 22, len(blob) - 1)]
    directory_start = zipfile.ZipFile(io.BytesIO(blob)).start_dir
    offsets = sorted(set(range(0, directory_start, 13)) | set(range(directory_start, len(blob))))
    for offset in offsets:
        flipped = bytearray(blob)
        flipped[offset] ^= 0x20
        cases.append((f"byte {offset} flipped", bytes(flipped)))
    return cases


def assert_damage_is_reported(tmp_path: Path, blob: bytes, load, same) -> None:
    """Each damaged file raises a ValueError/OSError naming it, or loads exactly the original."""
    path = tmp_path / "case.npz"
    loaded = 0
    for label, data in damaged_versions(blob):
        path.write_bytes(data)
        try:
            result = load(path)
        except (ValueError, OSError) as err:
            assert str(path) in str(err), f"{label}: {err!r} does not name the file"
            continue
        assert same(result), f"{label}: loaded without error but with different contents"
        loaded += 1
    assert loaded < len(damaged_versions(blob)) // 4  # most bytes matter


def test_a_damaged_trajectory_file_is_an_error_naming_it(tmp_path):
    original = saved_trajectory(tmp_path / "traj.npz")
    blob = (tmp_path / "traj.npz").read_bytes()
    assert_damage_is_reported(tmp_path, blob, Trajectory.load,
                              lambda loaded: same_trajectory(original, loaded))


def test_a_damaged_state_dict_file_is_an_error_naming_it(tmp_path):
    source = MLP([4, 3, 2], seed=3)
    source.save(tmp_path / "model.npz")
    blob = (tmp_path / "model.npz").read_bytes()
    expected = source.state_dict()

    def same(model):
        return all(np.array_equal(v, expected[k]) for k, v in model.state_dict().items())

    for strict in (True, False):
        assert_damage_is_reported(tmp_path, blob,
                                  lambda p, s=strict: MLP([4, 3, 2], seed=0).load(p, strict=s),
                                  same)


def test_specific_damage_gets_a_message_that_says_what_is_wrong(tmp_path):
    path = tmp_path / "traj.npz"
    saved_trajectory(path)
    blob = path.read_bytes()
    cases = {"empty": (b"", "is empty"), "text": (b"hello\n", "not an .npz"),
             "truncated": (blob[: len(blob) // 2], "truncated or damaged")}
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    cases["npy"] = (npy.getvalue(), "single .npy array")
    for label, (data, message) in cases.items():
        path.write_bytes(data)
        for load in (Trajectory.load, MLP([4, 3, 2]).load):
            with pytest.raises(ValueError, match=message) as info:
                load(path)
            assert str(path) in str(info.value), label
    with pytest.raises(FileNotFoundError, match="no state-dict file at"):
        MLP([4, 3, 2]).load(tmp_path / "missing.npz")


def contents(path: Path) -> tuple[dict, bytes]:
    """The arrays of a saved file and its zip comment (the manifest)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, zipfile.ZipFile(path).comment


def rewrite(path: Path, arrays: dict, comment: bytes = b"") -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    if comment:
        with zipfile.ZipFile(path, "a") as archive:
            archive.comment = comment


def test_np_load_sees_exactly_the_saved_arrays_and_the_manifest_lists_them(tmp_path):
    saved_trajectory(tmp_path / "traj.npz")
    arrays, comment = contents(tmp_path / "traj.npz")
    assert set(arrays) == {"snapshots", "steps", "layout", "metadata", "gradients"}
    manifest = json.loads(comment)
    assert manifest["format"] == "kooplearn_prune.trajectory" and manifest["format_version"] == 2
    assert manifest["arrays"]["gradients"] == {"shape": [6, 12], "dtype": "<f4",
                                               "crc32": _archive.checksum(arrays["gradients"])}


def test_a_dropped_or_altered_array_fails_the_manifest(tmp_path):
    path = tmp_path / "traj.npz"
    saved_trajectory(path)
    arrays, comment = contents(path)
    rewrite(path, {k: v for k, v in arrays.items() if k != "gradients"}, comment)
    with pytest.raises(ValueError, match=r"manifest lists arrays .*'gradients'.* but it holds"):
        Trajectory.load(path)
    rewrite(path, {**arrays, "snapshots": arrays["snapshots"] + 1}, comment)
    with pytest.raises(ValueError, match="'snapshots' fails its checksum"):
        Trajectory.load(path)
    rewrite(path, {**arrays, "gradients": arrays["gradients"][:3]}, comment)
    with pytest.raises(ValueError, match="'gradients' has shape"):
        Trajectory.load(path)
    rewrite(path, {**arrays, "extra": np.zeros(2)}, comment)
    with pytest.raises(ValueError, match=r"but it holds \[.*'extra'"):
        Trajectory.load(path)
    rewrite(path, arrays, json.dumps({**json.loads(comment), "format_version": 9}).encode())
    with pytest.raises(ValueError, match="format version 9; this kooplearn_prune reads up to 2"):
        Trajectory.load(path)
    rewrite(path, arrays, comment[:-5])
    with pytest.raises(ValueError, match="manifest is not readable"):
        Trajectory.load(path)


def test_files_without_a_manifest_still_load_and_are_checked_for_structure(tmp_path):
    """Format version 1 (no manifest, no checksums): what ``save`` wrote before."""
    path = tmp_path / "old.npz"
    original = saved_trajectory(path)
    arrays, _ = contents(path)
    rewrite(path, arrays)
    assert same_trajectory(original, Trajectory.load(path))
    model = MLP([4, 3, 2], seed=3)
    rewrite(tmp_path / "old_model.npz", model.state_dict())
    loaded = MLP([4, 3, 2], seed=0).load(tmp_path / "old_model.npz")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)
    rewrite(path, {**arrays, "steps": np.zeros(6, dtype=np.float64)})
    with pytest.raises(ValueError, match=f"{path}.*steps must be integers"):
        Trajectory.load(path)
    rewrite(path, {**arrays, "extra": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected arrays \['extra'\]"):
        Trajectory.load(path)


def test_a_manifest_too_long_for_the_zip_comment_is_kept_as_a_member(tmp_path):
    model = Sequential(*[Linear(1, 1, rng=i) for i in range(600)])  # 1200 arrays
    path = model.save(tmp_path / "deep.npz")
    arrays, comment = contents(path)
    assert comment == b"" and "__manifest__" in arrays and len(arrays) == 1201
    copy = Sequential(*[Linear(1, 1, rng=1000 + i) for i in range(600)]).load(path)
    assert all(np.array_equal(v, arrays[k]) for k, v in copy.state_dict().items())
    rewrite(path, {k: v for k, v in arrays.items() if k != "599.bias"})
    with pytest.raises(ValueError, match=r"deep.npz is damaged: its manifest lists arrays"):
        copy.load(path, strict=False)


@pytest.mark.parametrize("layout, message", [
    ("{not json", "'layout' is not valid JSON"),
    ("[1, 2]", "'layout' is not a JSON object"),
    ('{"names": ["w"], "shapes": [[3, 3]]}', "missing key 'prunable'"),
    ('{"names": ["w"], "shapes": [[2, 2]], "prunable": [true]}', "snapshots"),
])
def test_a_malformed_layout_is_an_error_naming_the_file(tmp_path, layout, message):
    path = tmp_path / "traj.npz"
    saved_trajectory(path)
    arrays, _ = contents(path)
    arrays["layout"] = np.array(layout)
    manifest = {"format": "kooplearn_prune.trajectory", "format_version": 2,
                "arrays": _archive.array_manifest(arrays)}
    for comment in (b"", json.dumps(manifest).encode()):  # format versions 1 and 2
        rewrite(path, arrays, comment)
        with pytest.raises(ValueError, match=message) as info:
            Trajectory.load(path)
        assert str(path) in str(info.value)


def test_a_trajectory_file_is_not_taken_for_a_state_dict(tmp_path):
    saved_trajectory(tmp_path / "traj.npz")
    with pytest.raises(ValueError, match="is not a state-dict file"):
        MLP([4, 3, 2]).load(tmp_path / "traj.npz")
    MLP([4, 3, 2]).save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="not a trajectory file: .*'kooplearn_prune.state_dict'"):
        Trajectory.load(tmp_path / "model.npz")
    with pytest.raises(KeyError, match="cannot load .*model.npz into MLP: .*missing keys"):
        MLP([4, 3, 3, 2]).load(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="cannot load .*model.npz into MLP: .*has shape"):
        MLP([4, 5, 2]).load(tmp_path / "model.npz")
