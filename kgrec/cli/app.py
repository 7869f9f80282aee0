"""The ``kgrec`` Typer app and its one error path.

Every command is registered with :func:`command`, which turns the failures a user can cause
(bad input, a missing store or artifact, data too small, an unreachable server) into one clean
``error: ...`` line on stderr and exit status 2 — never a traceback. Commands only map flags onto
:mod:`kgrec.workflow` (and :mod:`kgrec.serving` to load artifacts) and print.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer

from kgrec.cli.output import error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge-graph-augmented recommendation and search: ingest, evaluate, train, serve.")

F = TypeVar("F", bound=Callable[..., Any])


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input or the environment is wrong", not "kgrec has a bug"."""
    import neo4j.exceptions

    from kgrec.kg.files import StoreLockedError
    from kgrec.kg.neo4j_store import Neo4jConfigError

    return (ValueError, OSError, UnicodeError, LookupError, Neo4jConfigError, StoreLockedError, neo4j.exceptions.ServiceUnavailable,
            neo4j.exceptions.AuthError, neo4j.exceptions.ClientError)


def command(name: str | None = None, **options: Any) -> Callable[[F], F]:
    """Register ``fn`` as a command whose expected failures print one line and exit 2."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
                raise
            except KeyboardInterrupt:
                error("interrupted")
                raise typer.Exit(130) from None
            except _expected_errors() as exc:
                error(exc)
                raise typer.Exit(2) from None

        app.command(name, **options)(run)
        return fn

    return register


def show_progress(flag: bool | None) -> bool:
    """``--progress/--no-progress``; unset = bars only when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def quiet_transformers() -> None:
    """No transformers warnings or download bars in command output."""
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def text_argument(value: str, name: str) -> str:
    """``value`` of a text argument, refused when it is not valid UTF-8 (argv bytes that could not be
    decoded arrive as lone surrogates) or is blank."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise typer.BadParameter("is not valid UTF-8 text", param_hint=name) from None
    if not value.strip():
        raise typer.BadParameter("is empty", param_hint=name)
    return value


def split_list(value: str | None, name: str = "") -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (None or empty -> ``[]``)."""
    if not value:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        text_argument(item, name or "list")
    return items


def tasks_option(value: str | None) -> tuple[str, ...] | None:
    """``--tasks rec|search|rec,search|auto`` -> a tuple (None = auto)."""
    if value is None or value == "auto":
        return None
    names = tuple(split_list(value.replace("+", ","), "--tasks"))
    bad = [t for t in names if t not in ("rec", "search")]
    if bad or not names:
        raise typer.BadParameter(f"{value!r}: choose rec, search, rec,search or auto", param_hint="--tasks")
    return names

