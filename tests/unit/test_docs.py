"""The code and the pages cite the notes in docs/ by file and section: every citation resolves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITE = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)")  # a relative link from one docs page to another
PAGES = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages another branch writes, cited before they land (the README's deployment section).
PENDING = {"deploy.md"}
# Tests whose own text holds example citations.
EXAMPLES = {"test_docs.py", "test_results_index.py"}


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _unresolved(cited: list[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    bad = []
    for where, name, anchor in cited:
        md = ROOT / "docs" / name
        if not md.is_file() and name in PENDING and not anchor:
            continue
        if not md.is_file() or (anchor and anchor not in _anchors(md)):
            bad.append((where, name, anchor))
    return bad


def test_every_docs_citation_in_the_code_resolves():
    code = [*sorted((ROOT / "hub_reflow").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
            ROOT / "benchmarks" / "gpu.sh", *sorted((ROOT / "tests").rglob("*.py"))]
    cited = [(str(f.relative_to(ROOT)), m.group(1), m.group(2)) for f in code if f.name not in EXAMPLES
             for m in CITE.finditer(f.read_text())]
    assert len(cited) >= 10
    assert _unresolved(cited) == []


def test_every_docs_citation_in_the_pages_resolves():
    """README.md, MODEL_CARD.md and docs/*.md: ``docs/NAME.md#anchor`` anywhere, and a docs page's
    relative links to its neighbours (``[x](NAME.md#anchor)``)."""
    cited = [(str(p.relative_to(ROOT)), m.group(1), m.group(2)) for p in PAGES for m in CITE.finditer(p.read_text())]
    cited += [(str(p.relative_to(ROOT)), m.group(1), m.group(2)) for p in PAGES if p.parent.name == "docs"
              for m in LINK.finditer(p.read_text())]
    assert len(cited) >= 50
    assert _unresolved(cited) == []


def test_a_citation_of_a_missing_section_is_caught():
    assert _unresolved([("x", "results.md", "closed-loop-success"), ("x", "cli.md", None)]) == []
    assert _unresolved([("x", "results.md", "no-such-section")]) == [("x", "results.md", "no-such-section")]
    assert _unresolved([("x", "nowhere.md", None)]) == [("x", "nowhere.md", None)]


def test_no_code_cites_the_missing_design_brief():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "hub_reflow").rglob("*.py") if "DESIGN.md" in p.read_text()]
    assert offenders == []


# Module paths cited in the pages and the code: `hub_reflow/x/y.py`, `hub_reflow.x.y(.name)`, and a
# bare `name.py` (or `folder/name.py`), which must name a file somewhere in the repository.
MODULE_FILE = re.compile(r"\bhub_reflow/([\w/]+\.py)\b")
MODULE_DOTTED = re.compile(r"(?<![\w/.])hub_reflow((?:\.\w+)+)")
BARE_FILE = re.compile(r"(?<![\w/.-])((?:\w+/)*\w+\.py)\b")
CODE = [*sorted((ROOT / "hub_reflow").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
        *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]
FILES = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".git" not in p.parts and "build" not in p.parts}
LEROBOT = Path(importlib.util.find_spec("lerobot").origin).parent  # the code cites LeRobot's own files too


def _module_exists(parts: list[str]) -> bool:
    """``hub_reflow.a.b...``: a module or package of the tree, then at most two names, the first one
    named in its source (defined or imported there). ``hub_reflow.templates`` is the top-level templates/."""
    if parts[0] == "templates":
        return len(parts) == 1 and (ROOT / "templates").is_dir()
    for n in range(len(parts), -1, -1):
        path = ROOT / "hub_reflow" / Path(*parts[:n])
        source = path.with_suffix(".py") if n and path.with_suffix(".py").is_file() else path / "__init__.py"
        if source.is_file():
            rest = parts[n:]
            return len(rest) <= 2 and (not rest or rest[0].startswith("__") or
                                       re.search(rf"\b{rest[0]}\b", source.read_text()) is not None)
    return False


def _bad_module_citations(text: str) -> list[str]:
    bad = [m.group(0) for m in MODULE_FILE.finditer(text) if not (ROOT / "hub_reflow" / m.group(1)).is_file()]
    bad += [m.group(0) for m in MODULE_DOTTED.finditer(text) if not _module_exists(m.group(1).strip(".").split("."))]
    bad += [m.group(1) for m in BARE_FILE.finditer(text) if not m.group(1).startswith("hub_reflow/")
            and not any(f == m.group(1) or f.endswith("/" + m.group(1)) for f in FILES) and not (LEROBOT / m.group(1)).is_file()]
    return bad


def test_every_module_path_cited_exists():
    """A module moved or renamed leaves no citation of its old path behind."""
    pages = [*PAGES, ROOT / "templates" / "model_card.md"]
    bad = {str(f.relative_to(ROOT)): b for f in [*pages, *CODE] if f.name not in EXAMPLES
           and (b := _bad_module_citations(f.read_text()))}
    assert bad == {}


def test_a_citation_of_a_moved_module_is_caught():
    assert _bad_module_citations("see `hub_reflow/checks/fidelity.py` and hub_reflow.checks.fidelity.measure") == []
    assert _bad_module_citations("see `hub_reflow/evaluate.py`, hub_reflow.evaluate, priority.py") == [
        "hub_reflow/evaluate.py", "hub_reflow.evaluate", "priority.py"]
