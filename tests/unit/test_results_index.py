"""benchmarks/results/: every file is cited by a page and indexed, every cited file exists, no page
cites results by a glob, and INDEX.md is what benchmarks/index_results.py writes today."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import index_results  # noqa: E402

MAX_BENCHMARK_LINES = 400


def test_the_repository_has_no_results_problem():
    assert index_results.problems(ROOT) == []


def test_index_is_the_generated_one_and_lists_every_file():
    index = (ROOT / "benchmarks" / "results" / "INDEX.md").read_text()
    assert index == index_results.render(ROOT)
    files = index_results.results_files(ROOT / "benchmarks" / "results")
    assert len(files) > 50 and "closed_loop/closed_loop.json" in files
    for rel in files:
        folder, name = rel.split("/", 1)
        assert f"\n## {folder}\n" in index and f"\n| {name} |" in index, rel
    assert "**not cited**" not in index


def test_every_results_folder_is_one_benchmark():
    results = ROOT / "benchmarks" / "results"
    assert [p.name for p in results.iterdir() if p.is_file()] == ["INDEX.md"]
    for folder in (p for p in results.iterdir() if p.is_dir()):
        for f in folder.glob("*.json"):
            data = json.loads(f.read_text())
            assert data.get("benchmark", "eval" if "success_rates" in data else None) == folder.name, f


def _world(tmp_path: Path, index: str | None) -> Path:
    """A repository with two results files and a page citing one of them, plus ``index``."""
    results = tmp_path / "benchmarks" / "results" / "closed_loop"
    results.mkdir(parents=True)
    (results / "a.json").write_text(json.dumps({"date": "2026-01-02T03:04:05+00:00", "command": "python benchmarks/closed_loop.py",
                                                "benchmark": "closed_loop", "settings": {"steps": [0, 2000], "seeds": [1000]}}))
    (results / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n\n## Closed loop\n\n`benchmarks/results/closed_loop/a.json` and its "
                                                  "picture closed_loop/a.png.\n")
    if index is not None:
        (tmp_path / "benchmarks" / "results" / "INDEX.md").write_text(index)
    return tmp_path


def test_the_checks_find_each_fault(tmp_path):
    root = _world(tmp_path, None)
    assert index_results.problems(root) == ["benchmarks/results/INDEX.md is stale: run python benchmarks/index_results.py"]
    rendered = index_results.render(root)
    assert "| a.json | 2026-01-02 | `python benchmarks/closed_loop.py` | steps [0,2000]; seeds [1000] | docs/results.md#closed-loop |" in rendered
    assert "| a.png |  |  | picture of a.json | docs/results.md#closed-loop |" in rendered
    (root / "benchmarks" / "results" / "INDEX.md").write_text(rendered)
    assert index_results.problems(root) == []

    # A file no page cites; a cited file that is not there; a glob; a stale index.
    (root / "benchmarks" / "results" / "closed_loop" / "b.json").write_text(json.dumps({"benchmark": "closed_loop"}))
    with (root / "docs" / "results.md").open("a") as f:
        f.write("See `closed_loop/gone.json` and `benchmarks/results/closed_loop/a*.json`.\n")
    assert index_results.problems(root) == [
        "benchmarks/results/INDEX.md is stale: run python benchmarks/index_results.py",
        "cited but missing: benchmarks/results/closed_loop/gone.json (docs/results.md#closed-loop)",
        "cited by a glob (cite each file): docs/results.md:6: closed_loop/a*.json",
        "cited by no page: benchmarks/results/closed_loop/b.json",
    ]
    assert "| b.json | not recorded |  |  | **not cited** |" in index_results.render(root)


def test_a_module_path_is_no_results_citation(tmp_path):
    """``hub_reflow/closed_loop/...`` names code, not a results file; nor is the index a results file."""
    root = _world(tmp_path, None)
    with (root / "docs" / "results.md").open("a") as f:
        f.write("The rollouts: `hub_reflow/closed_loop/rollouts.py`; every file: `benchmarks/results/INDEX.md`.\n")
    assert index_results.citations(root) == ({"closed_loop/a.json": ["docs/results.md#closed-loop"],
                                              "closed_loop/a.png": ["docs/results.md#closed-loop"]}, [])


def test_no_benchmark_file_exceeds_400_lines():
    long = {p.name: n for p in (ROOT / "benchmarks").glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_BENCHMARK_LINES}
    assert long == {}
