"""The tutorials are part of the documentation, so they must run: execute each one top to bottom.

Every notebook ``tutorials/0[1-7]_*.ipynb`` present is executed with nbclient in a fresh
``python3`` kernel (the interpreter running pytest), with the current directory set to a
temporary folder and matplotlib on the Agg backend. A notebook passes when every cell runs, it
stays within its time budget, and it leaves no file behind. Notebook 08 (CuPy) runs only where
CuPy and a CUDA device are present.

The exercise cells (tagged ``exercise``) are replaced by the worked solutions of
``tutorials/solutions/lesson<NN>.py`` before the run, and the checks run in strict mode
(``KOOPLEARN_PRUNE_EXERCISES_STRICT=1``), so every exercise is known to be solvable.

Lessons 02-07 also ``assert`` the measured properties their prose states (each assertion names,
in a comment, the sentence it backs), so a change that breaks a claim fails this test at the
default ``SCALE = 1``; the assertions were also checked at ``SCALE = 2``.

Cheap static checks run on every notebook too: outputs are stripped in git, the lesson has a
title and a ``SCALE`` knob near the top, ``tutorials/README.md`` lists it, every lesson has two to
four exercises each followed by a check cell, and every exercise has exactly one solution.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import cupy_available

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
CPU_NOTEBOOKS = sorted(TUTORIALS.glob("0[1-7]_*.ipynb"))
GPU_NOTEBOOKS = sorted(TUTORIALS.glob("08_*.ipynb"))
ALL_NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))

CELL_TIMEOUT_S = 120      # one cell; generous, the 2-core CI machine is shared
NOTEBOOK_BUDGET_S = 90    # one whole notebook, kernel start included (they aim for < 20 s)
HARD_TIMEOUT_S = 240      # pytest-timeout kills a hung kernel after this


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


SOLUTIONS = TUTORIALS / "solutions"
_BLOCK = re.compile(r"^# %% exercise (\d\d\.\d+)\s*$", re.MULTILINE)


def solutions_of(path: Path) -> dict[str, str]:
    """{exercise number: worked solution} from ``tutorials/solutions/lesson<NN>.py``."""
    file = SOLUTIONS / f"lesson{path.name[:2]}.py"
    if not file.exists():
        return {}
    parts = _BLOCK.split(file.read_text(encoding="utf-8"))
    return {number: code.strip() + "\n" for number, code in zip(parts[1::2], parts[2::2])}


def exercise_cells(nb) -> dict[str, object]:
    return {c.metadata["exercise"]: c for c in nb.cells
            if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])}


def fill_in_solutions(nb, path: Path) -> None:
    """Replace every exercise cell by its worked solution (the checks then must pass)."""
    solutions = solutions_of(path)
    for number, cell in exercise_cells(nb).items():
        cell.source = solutions[number]


def execute_notebook(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> float:
    """Run ``path`` top to bottom in ``workdir`` with the exercises solved; return the wall time.

    The exercise checks run in strict mode, so a solution the check rejects fails the run.
    """
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("KOOPLEARN_PRUNE_EXERCISES_STRICT", "1")
    monkeypatch.delenv("KOOPLEARN_PRUNE_BACKEND", raising=False)  # notebooks choose their own
    nb = nbformat.read(path, as_version=4)
    fill_in_solutions(nb, path)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first failure
    elapsed = time.perf_counter() - start
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: a cell produced an error output: {errors[0]}"
    return elapsed


def _check_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               record_property) -> None:
    elapsed = execute_notebook(path, tmp_path, monkeypatch)
    record_property("seconds", round(elapsed, 2))
    print(f"{path.name}: {elapsed:.1f} s")
    assert elapsed < NOTEBOOK_BUDGET_S, (
        f"{path.name} took {elapsed:.0f} s, over its {NOTEBOOK_BUDGET_S} s budget; lower its "
        f"default sizes (users scale up with SCALE)")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not left, f"{path.name} left files in its working directory: {left}"


@pytest.mark.slow
@pytest.mark.timeout(HARD_TIMEOUT_S)
@pytest.mark.parametrize("path", CPU_NOTEBOOKS, ids=_ids(CPU_NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       record_property) -> None:
    _check_run(path, tmp_path, monkeypatch, record_property)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.timeout(HARD_TIMEOUT_S)
@pytest.mark.parametrize("path", GPU_NOTEBOOKS, ids=_ids(GPU_NOTEBOOKS))
def test_gpu_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           record_property) -> None:
    if not cupy_available():
        pytest.skip("needs CuPy and a CUDA device")
    _check_run(path, tmp_path, monkeypatch, record_property)


# ------------------------------------------------------------------ static checks (no kernel)
def test_tutorials_exist() -> None:
    assert CPU_NOTEBOOKS, f"no tutorial notebooks found in {TUTORIALS}"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_is_stripped_and_valid(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} keep outputs; strip them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_is_a_lesson(path: Path) -> None:
    """A title first, prose throughout, and the ``SCALE`` knob in one of the first code cells."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and nb.cells[0].cell_type == "markdown"
    assert nb.cells[0].source.lstrip().startswith("# "), f"{path.name}: first cell needs a # title"
    n_md = sum(c.cell_type == "markdown" for c in nb.cells)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert n_md >= n_code / 2, f"{path.name}: {n_md} prose cells for {n_code} code cells"
    first_code = [c.source for c in nb.cells if c.cell_type == "code"][:3]
    assert any(re.search(r"^SCALE\s*=", src, re.MULTILINE) for src in first_code), (
        f"{path.name}: define SCALE = 1 in one of the first code cells so users can scale up")


def test_readme_lists_every_notebook() -> None:
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in ALL_NOTEBOOKS if p.name not in readme]
    assert not missing, f"tutorials/README.md does not mention {missing}"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_every_exercise_has_a_check_and_a_solution(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = exercise_cells(nb)
    assert 2 <= len(cells) <= 4, f"{path.name}: {len(cells)} exercises, want two to four"
    assert all(number.startswith(path.name[:2] + ".") for number in cells), sorted(cells)
    solutions = solutions_of(path)
    assert set(solutions) == set(cells), (
        f"{path.name}: exercises {sorted(cells)} but solutions {sorted(solutions)}")
    for i, cell in enumerate(nb.cells):
        if "exercise" in cell.metadata.get("tags", []):
            following = nb.cells[i + 1]
            assert following.cell_type == "code" and following.source.startswith("check."), (
                f"{path.name}: exercise {cell.metadata['exercise']} needs a check cell after it")


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_no_warnings_are_silenced(path: Path) -> None:
    """Students see what the library tells them: no notebook ignores warnings wholesale."""
    nb = nbformat.read(path, as_version=4)
    silenced = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                and re.search(r"(simplefilter|filterwarnings)\(\s*[\"']ignore", c.source)]
    assert not silenced, f"{path.name}: cells {silenced} silence warnings; show and explain them"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_no_private_engine_names(path: Path) -> None:
    """Lessons teach the public API only (define_op, walk, Tensor.parents/op/grad_fn)."""
    nb = nbformat.read(path, as_version=4)
    private = re.compile(r"\._(parents|backward|op|make)\b")
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and private.search(c.source)]
    assert not hits, f"{path.name}: cells {hits} use private names of the autograd engine"
