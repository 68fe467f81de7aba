"""The code cites the design notes in docs/ by file and section: every citation resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITE = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_docs_citation_in_the_code_resolves():
    cited = [(py.relative_to(ROOT), m.group(1), m.group(2))
             for py in sorted((ROOT / "hub_reflow").rglob("*.py")) for m in CITE.finditer(py.read_text())]
    assert len(cited) >= 10
    for where, name, anchor in cited:
        md = ROOT / "docs" / name
        assert md.is_file(), (where, name)
        if anchor:
            assert anchor in _anchors(md), (where, name, anchor)


def test_no_code_cites_the_missing_design_brief():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "hub_reflow").rglob("*.py") if "DESIGN.md" in p.read_text()]
    assert offenders == []
