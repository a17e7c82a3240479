"""The README's speed figures are quoted from the generated report of the CPU it names, not written by hand."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, heading: str) -> str:
    """The markdown from `heading`'s line up to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    nxt = re.search(rf"^#{{1,{level}}} ", text[start + len(heading):], flags=re.M)
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def _sections(report: str):
    """(heading, body) of each machine's section of a report (its '## ' headings)."""
    return [(m.group(1), _section(report, m.group(0))) for m in re.finditer(r"^## (.+)$", report, flags=re.M)]


def test_the_readmes_speed_figures_are_cells_of_the_fps_report_section_of_the_cpu_it_names():
    speed = _section((ROOT / "README.md").read_text(), "## Speed")
    figures = re.findall(r"\b\d+\.\d+\b", speed)
    assert figures, "the README's Speed section quotes no figure"
    report = (ROOT / "docs" / "reports" / "FPS.md").read_text()
    named = [flag for flag in ("amx_int8", "avx512_bf16", "avx512_vnni", "avx2") if flag in speed]
    sections = [body for heading, body in _sections(report) if all(flag in heading for flag in named)]
    assert named and sections, f"the README names CPU flags {named} that no section of FPS.md has"
    cells = {cell.strip() for body in sections for line in body.splitlines() if line.startswith("|") for cell in line.split("|")}
    missing = [f for f in figures if f not in cells]
    assert not missing, f"README figures not in FPS.md's section for {named}: {missing}"
