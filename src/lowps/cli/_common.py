"""What every command shares: the metric's flags (derived from `lowps.MetricConfig`), argparse types,
number formatting, atomic row output and error messages that name CLI flags. No torch import here."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, SupportsFloat, TextIO

from ..config import MetricConfig

# -- argparse types --------------------------------------------------------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse reports anything else as a usage error)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
        return v
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def parse_layers(text: str | None) -> tuple[str | int, ...] | None:
    """``"stage1,2"`` -> ``("stage1", 2)``; empty -> None (all layers)."""
    if not text:
        return None
    return tuple(int(v) if v.lstrip("-").isdigit() else v for v in text.split(","))


# -- the metric's flags, from MetricConfig's fields --------------------------------------------------

_PARSERS: dict[str, Callable[[str], Any]] = {"layers": parse_layers}


def metric_fields() -> list[dataclasses.Field]:
    """`MetricConfig` fields that are CLI flags (``--name-with-dashes``)."""
    return [f for f in dataclasses.fields(MetricConfig) if f.metadata.get("cli")]


def add_metric_options(p: argparse.ArgumentParser, several: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
    """Add one flag per `MetricConfig` field (help, choices and defaults from the field).

    ``several``: fields that take one or more values, each scored (lowps-score's ``--distance``).
    ``exclude``: fields this command does not take (e.g. ``precision`` for ``export``: graphs are fp32).
    """
    several, exclude = set(several), set(exclude)
    for f in metric_fields():
        if f.name in exclude:
            continue
        meta = f.metadata["cli"]
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=meta["help"])
            continue
        kw: dict[str, Any] = {"help": meta["help"] + (f" (default: {default})" if default is not None else "")}
        if "choices" in meta:
            kw["choices"] = list(meta["choices"])
        if "parse" in meta:
            kw["type"] = _PARSERS[meta["parse"]]
        if f.name in several:
            kw["nargs"] = "+"
            kw["help"] = f"one or more, each scored: {kw['help']}"
            default = [default]
        p.add_argument(flag, default=default, **kw)


def metric_config(a: argparse.Namespace, **overrides: Any) -> MetricConfig:
    """The `MetricConfig` for parsed flags (fields a command has no flag for keep their defaults)."""
    values = {f.name: getattr(a, f.name) for f in metric_fields() if hasattr(a, f.name)}
    return MetricConfig(**(values | overrides))


def add_batch_options(p: argparse.ArgumentParser, batch: int) -> None:
    """Options shared by the commands that run the metric over many files."""
    add_metric_options(p)
    p.add_argument("--batch-size", type=positive_int, default=batch, help=f"images per metric call (default: {batch})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--out", default=None, help="CSV (default: stdout) or .json file, written atomically")
    p.add_argument("--skip-bad", action="store_true",
                   help="report unreadable images on stderr and go on without them (default: stop at the first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -- output -----------------------------------------------------------------------------------------

def num(v: SupportsFloat) -> str:
    """6 significant digits: a true 1.9e-7 prints as 1.9e-07, not 0.000000."""
    return f"{float(v):.6g}"


def write_rows(path: str | None, header: list[str], rows: list[list], as_json: object | None = None) -> None:
    """CSV (numbers with 6 significant digits) to stdout or ``path``; ``.json`` paths get ``as_json``
    (numbers as numbers), or one object per row. Files are written atomically."""
    import csv

    from .._io import write_json, write_text_atomic

    if path and path.endswith(".json"):
        write_json(path, as_json if as_json is not None else [dict(zip(header, r)) for r in rows])
        return
    text_rows = [[num(v) if isinstance(v, float) else v for v in r] for r in rows]

    def write(f: TextIO) -> None:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(text_rows)
    if path:
        write_text_atomic(path, write)
    else:
        write(sys.stdout)


def report_skip(prog: str) -> Callable[[Any, Exception], None]:
    """An ``on_skip`` callback for `lowps.folders`: one line on stderr per unreadable image."""
    def report(path: Any, e: Exception) -> None:
        print(f"{prog}: skipped {path}: {e}", file=sys.stderr)
    return report


# -- errors -----------------------------------------------------------------------------------------

#: Python argument names in library errors -> the CLI flags a CLI user types.
_FLAG_NAMES = [("head_weights=", "--head-weights "), ("force_precision=True", "--force-precision"),
               ("skip_bad=True", "--skip-bad"), ("style_norm=", "--style-norm "),
               ("weights=", "--weights "), ("backbone=", "--backbone "), ("distance=", "--distance "),
               ("layers=", "--layers "), ("precision=", "--precision "), ("batch_size", "--batch-size")]

#: What a command reports as "error:" and exit status 2 rather than as a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, ImportError, OSError, FloatingPointError)


def cli_message(e: BaseException) -> str:
    """A library error in CLI words: Python argument names become flags; a DataLoader worker's
    re-raised traceback is cut to its original message."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    for py, flag in _FLAG_NAMES:
        msg = re.sub(r"(?<![\w-])" + re.escape(py), flag, msg)
    return msg


def run(prog: str, func: Callable[[argparse.Namespace], int | None], a: argparse.Namespace) -> int:
    """Run a command; user errors print ``PROG: error: ...`` and return 2. The command's own process
    tunes the allocator (`lowps.accel.tune_allocator_for_cli`; ``LOWPS_TUNE_ALLOCATOR=0`` keeps glibc's
    defaults): a CLI owns its process, a library call does not."""
    from ..accel import tune_allocator_for_cli

    tune_allocator_for_cli()
    try:
        return int(func(a) or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {cli_message(e)}", file=sys.stderr)
        return 2
