#!/usr/bin/env python3
"""The digest of pyproject.toml's [project.dependencies] that requirements.lock records,
so that a test can tell a lock made from other dependencies (scripts/lock.sh)."""

import hashlib
import tomllib
from pathlib import Path


def digest(pyproject: Path) -> str:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return hashlib.sha256("\n".join(sorted(dependencies)).encode()).hexdigest()


if __name__ == "__main__":
    print(digest(Path(__file__).resolve().parents[1] / "pyproject.toml"))
