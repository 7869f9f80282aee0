"""Run mypy over the installed namespace ``kgrec`` from the repository's layer folders.

The repository keeps one folder per layer (``kg/``, ``fusion/`` ...) that installs as ``kgrec.kg``,
``kgrec.fusion`` ... (pyproject's package-dir). mypy does not follow the editable install's import
hook, so this builds the namespace as a tree of symlinks under ``build/typecheck`` and checks it with
the settings of ``[tool.mypy]`` in pyproject.toml. Usage: ``python tools/typecheck.py [mypy args]``.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    tree = ROOT / "build" / "typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "kgrec").mkdir(parents=True)
    for source in (ROOT / package_dir["kgrec"]).iterdir():
        if source.name != "__pycache__":
            (tree / "kgrec" / source.name).symlink_to(source)
    for package, folder in package_dir.items():
        if package != "kgrec":
            (tree / package.replace(".", "/")).symlink_to(ROOT / folder)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "kgrec", *argv]
    return subprocess.call(command, cwd=tree)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
