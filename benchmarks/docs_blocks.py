"""Generated blocks in Markdown files: the text between ``<!-- KEY -->`` and ``<!-- /KEY -->`` is
a benchmark's rendering of its result file, replaced on every run (never hand-copied)."""
from __future__ import annotations

import re
from pathlib import Path


def write_block(path: str | Path, key: str, block: str) -> None:
    """Replace the ``key`` block of the Markdown file ``path`` by ``block`` (appended at the end
    when the file has none yet)."""
    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    if start not in text:
        text = text.rstrip() + f"\n\n{start}\n{end}\n"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{block}\n{end}", text, flags=re.S)
    path.write_text(text)
