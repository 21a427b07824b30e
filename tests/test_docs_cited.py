"""What the code cites in docs/ exists: every ``docs/....md`` a source file names, and the section it names
with it (``docs/contracts.md``, "Input"); and no source cites the design brief, which is not in the
repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("xnh_stream", "actors", "tests", "bench")
#: ``docs/x.md`` followed (after backquotes, a comma, an opening parenthesis) by a quoted section name.
CITATION = re.compile(r"(docs/[A-Za-z0-9_./-]+\.md)(?:`*,?\s*\(?\"([^\"\n]+)\")?")


def _sources() -> list[Path]:
    return sorted(f for d in SOURCES for f in (ROOT / d).rglob("*.py") if ".venv" not in f.parts)


def _citations(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]


def _headings(doc: Path) -> set[str]:
    """The section titles of a markdown file, without ``#`` and backquotes."""
    return {line.lstrip("#").strip().replace("`", "") for line in doc.read_text().splitlines()
            if line.startswith("#")}


def _has_section(doc: Path, section: str) -> bool:
    """A heading is the section, or the section followed by a parenthesis (``Drift and warping
    (quality/drift.py)``)."""
    return any(h == section or h.startswith(section + " (") for h in _headings(doc))


def test_the_citation_pattern_finds_paths_and_sections():
    text = 'see ``docs/contracts.md``, "Input" and docs/metrics.md; (``docs/contracts.md`` ("Metrics"): x'
    assert _citations(text) == [("docs/contracts.md", "Input"), ("docs/metrics.md", None),
                                ("docs/contracts.md", "Metrics")]


def test_every_cited_doc_and_section_exists():
    missing: list[str] = []
    cited = 0
    for f in _sources():
        if f == Path(__file__):
            continue
        for path, section in _citations(f.read_text()):
            cited += 1
            doc = ROOT / path
            where = f"{f.relative_to(ROOT)} cites {path}"
            if not doc.is_file():
                missing.append(where)
            elif section is not None and not _has_section(doc, section):
                missing.append(f'{where}, section "{section}" (headings: {sorted(_headings(doc))})')
    assert cited >= 20  # the sources do cite docs/ (the pattern still matches how they write it)
    assert not missing, missing


def test_no_source_cites_the_design_brief_outside_the_repository():
    """The contract lives in docs/contracts.md; DESIGN.md is not part of the repository."""
    assert not (ROOT / "DESIGN.md").exists()
    bad = [str(f.relative_to(ROOT)) for f in _sources()
           if f != Path(__file__) and "DESIGN.md" in f.read_text()]
    assert not bad, bad
