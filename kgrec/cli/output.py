"""Terminal output of the CLI: catalogue text made safe to print, tables, JSON, one error printer."""
from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: Any, lines: bool = False) -> str:
    """``text`` safe for a terminal: control characters (ESC sequences, carriage returns, ...) as
    ``\\xNN`` escapes and text that is not valid Unicode (e.g. undecodable bytes from argv) as
    backslash escapes — catalogue text never moves the cursor or clears the screen. ``lines``
    keeps newlines and tabs (multi-line messages)."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe(text: Any) -> str:
    """:func:`plain` and escaped for Rich markup (square brackets print as they are)."""
    return escape(plain(text))


def error(message: Any) -> None:
    """Print one error line to stderr (no markup is interpreted in ``message``)."""
    errors.print(f"[red]error:[/red] {escape(plain(message, lines=True))}", soft_wrap=True)


def warn(message: Any) -> None:
    errors.print(f"[yellow]warning:[/yellow] {escape(plain(message, lines=True))}", soft_wrap=True)


def print_json(payload: Any) -> None:
    """Standard JSON on stdout (NaN and infinities are an error, not invalid JSON)."""
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[tuple[str, str]], rows: list[list[str]]) -> Table:
    """A Rich table; ``columns`` are (name, justify); cells must already be :func:`safe`."""
    out = Table(title=title)
    for name, justify in columns:
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        out.add_row(*row)
    return out


def number(value: Any, digits: int = 4) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if v != v else f"{v:.{digits}f}"
