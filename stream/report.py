"""Sections of a markdown results file (bench/RESULTS.md): each writer owns one `## ` section."""
from __future__ import annotations

import re
from pathlib import Path

from engines.atomic import atomic_write_bytes


def write_section(path: Path, text: str) -> Path:
    """Replace the `## ` section that `text` starts with (its first line is the heading), or append it;
    every other section stays as it is."""
    heading = text.splitlines()[0]
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    body = text.rstrip("\n") + "\n\n"
    # a section runs to the next level-2 heading ("### " subsections belong to it) or the end of the file
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + body
    atomic_write_bytes(path, (new.rstrip("\n") + "\n").encode())
    return path
