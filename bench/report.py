"""Write one section of docs/benchmarks.md, replacing the previous figures of that section."""

from __future__ import annotations

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Produced by the scripts in bench/ (`python bench/<script>.py`); each script rewrites its own
section. Targets are checked here, never in timed tests.
"""


def write_section(title: str, body: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else HEADER
    block = f"<!-- {title} -->\n## {title}\n\n{body.strip()}\n<!-- /{title} -->\n"
    pattern = re.compile(rf"<!-- {re.escape(title)} -->.*?<!-- /{re.escape(title)} -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    REPORT.write_text(text)
