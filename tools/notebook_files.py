"""The loop both notebook tools share: check notebooks (exit 1 naming what is wrong) or rewrite them in place.

A rewritten notebook is written the way ``jupyter nbconvert`` and JupyterLab write one (indent 1, sorted
keys, UTF-8), so running a tool on a clean notebook leaves the file byte for byte as it was.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None, description: str, *, problems: Callable[[dict], list[str]],
         fix: Callable[[dict], bool], done: str, check_help: str) -> int:
    """``tool [--check] notebooks...``: with --check print ``path: problem`` lines, else ``fix`` each in place."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help=check_help)
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if args.check:
            for p in problems(nb):
                print(f"{path}: {p}")
                bad += 1
        elif fix(nb):
            write(path, nb)
            print(f"{done} {path}")
    return 1 if bad else 0
