"""The ``kgrec`` command line: it maps flags onto :mod:`kgrec.workflow` and prints (see :mod:`kgrec.cli.app`)."""
from kgrec.cli import evaluate, ingest, scoring  # noqa: F401 - registers the commands
from kgrec.cli.app import app

__all__ = ["app"]
