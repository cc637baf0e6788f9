"""The notebooks are part of the product: committed without outputs, and each runs top to bottom.

Each notebook ``notebooks/NN_name.ipynb`` is paired with a jupytext percent-format source
``notebooks/NN_name.py`` holding the same cells (edit either, then ``jupytext --sync``). Each has one cell
tagged ``parameters`` (papermill style) defining ``SMOKE = False``; CI runs it with ``SMOKE = True`` (small
models, few steps), a person runs the full setting.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def cell_contents(cells) -> list[tuple[str, str, tuple[str, ...]]]:
    """What a reader sees of each cell: its type, its source and its tags (ids, outputs and other metadata aside)."""
    def source(cell):
        text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        return text.strip()
    return [(c["cell_type"], source(c), tuple(c.get("metadata", {}).get("tags", []))) for c in cells]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 9, f"expected notebooks 00-08 in {NOTEBOOK_DIR}, found {[p.name for p in NOTEBOOKS]}"


def test_every_notebook_has_its_source_and_every_source_its_notebook():
    notebooks, sources = {p.stem for p in NOTEBOOKS}, {p.stem for p in SOURCES}
    assert not notebooks - sources, (f"no jupytext source for {sorted(notebooks - sources)}: run "
                                     f"`jupytext --sync notebooks/NAME.ipynb` to write notebooks/NAME.py")
    assert not sources - notebooks, (f"no notebook for {sorted(sources - notebooks)}: run "
                                     f"`jupytext --sync notebooks/NAME.py` to write notebooks/NAME.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_jupytext_source(path):
    jupytext = pytest.importorskip("jupytext")
    source = path.with_suffix(".py")
    if not source.exists():
        pytest.fail(f"{source.name} is missing: run `jupytext --sync notebooks/{path.name}`")
    from_source = cell_contents(jupytext.read(source, fmt="py:percent").cells)
    from_notebook = cell_contents(json.loads(path.read_text())["cells"])
    for i, (a, b) in enumerate(zip(from_notebook, from_source)):
        assert a == b, (f"{path.name} cell {i} differs from {source.name}: edit one, then run "
                        f"`jupytext --sync notebooks/{source.name}` (or the .ipynb) so both hold the same cells")
    assert len(from_notebook) == len(from_source), (
        f"{path.name} has {len(from_notebook)} cells, {source.name} {len(from_source)}: run `jupytext --sync`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_parameterized(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "SMOKE" in "".join(tagged[0]["source"]), f"{path.name}: the parameters cell must define SMOKE"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_setting(path, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.chdir(NOTEBOOK_DIR)
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"SMOKE": True},
                               kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
