"""The code and the pages cite the notes in docs/ by file and section: every citation resolves."""

from __future__ import annotations

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
