"""Generated blocks in Markdown files: the text between ``<!-- KEY -->`` and ``<!-- /KEY -->`` is
a benchmark's rendering of its result file, replaced on every run (never hand-copied)."""
from __future__ import annotations

import argparse
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


def criterion_label(name: str, options: dict | None) -> str:
    """A criterion as generated tables name it, with the options it ran with:
    ``shapley (batch_size=16, value=kl)``."""
    return name + (f" ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})" if options else "")


def add_block_arguments(parser: argparse.ArgumentParser) -> None:
    """``--write DOC --key KEY``: a report script's output into DOC's generated block KEY."""
    parser.add_argument("--write", default=None, help="Markdown file whose generated block --key is replaced")
    parser.add_argument("--key", default=None, help="the generated block's key (with --write)")


def write_or_print(parser: argparse.ArgumentParser, args: argparse.Namespace, text: str) -> None:
    """``text`` into the block :func:`add_block_arguments` named, or on stdout without ``--write``."""
    if (args.write is None) != (args.key is None):
        parser.error("--write and --key go together")
    if args.write:
        write_block(args.write, args.key, text)
    else:
        print(text)
