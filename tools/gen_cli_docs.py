"""Write docs/cli.md from the argparse parsers (the CLI reference is generated, never hand-edited).

    python tools/gen_cli_docs.py          # rewrite docs/cli.md
    python tools/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale (the test suite runs this)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowps.cli import build_parser, build_score_parser

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _walk(parser: argparse.ArgumentParser, prog: str):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prog} {name}")


def render() -> str:
    parts = ["# CLI reference", "",
             "Generated from the parsers by `python tools/gen_cli_docs.py`; every command calls the library.", ""]
    for root, parser in [("lowps", build_parser()), ("lowps-score", build_score_parser())]:
        for prog, p in _walk(parser, root):
            p.prog = prog
            parts += [f"## `{prog}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    import os
    os.environ["COLUMNS"] = "100"  # stable wrapping
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
