"""Helpers shared by the model tests: objects whose unpickling would run code."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any


class Pwn:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Eval:
    """Unpickling this evaluates Python code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def marker_path() -> Path:
    return Path(f"/tmp/pwned_{uuid.uuid4().hex}")
