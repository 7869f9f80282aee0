"""``python -m kgrec.cli`` (e.g. under ``torchrun``)."""
from kgrec.cli import app

app()
