"""Write the service's OpenAPI document: ``python -m app.openapi [--out openapi.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.config import Settings
from app.main import create_app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI schema of an app built with the default settings (no weights loaded)."""
    return create_app(Settings()).openapi()


def render(doc: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print or write the document."""
    p = argparse.ArgumentParser(prog="python -m app.openapi", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    args = p.parse_args(argv)
    text = render(openapi_document())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
