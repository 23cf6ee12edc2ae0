"""Report content as plain data: sections of paragraphs, tables and images, rendered to HTML and Markdown by
experiments/report.py. Producers (table, sweep, run) build sections; they never format HTML themselves."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimpleTable:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text (no markup)
    tables: list[SimpleTable] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, PNG path)
