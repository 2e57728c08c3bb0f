"""A small corpus of one's own that the tests write: mixed case, punctuation, digits, a
non-Latin script and blank lines (shared by tests/model and tests/app)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUBJECTS = ["The clerk", "Our agent", "Mrs. Tanaka", "The invoice", "Σοφία", "顧客"]
VERBS = ["paid", "checked", "sent", "Refused", "signed", "ENTERED"]
OBJECTS = ["order #4417,", "the bill.", "2 boxes;", "€35.50", "κατάλογος", "請求書"]
ENDS = ["today.", "on 3/4!", "(again)", "late...", "— fine", "ok?"]


def write_corpus(folder: Path, train_lines: int = 600, valid_lines: int = 120,
                 seed: int = 0) -> tuple[Path, Path, Path]:
    """train.txt, valid.txt and test.txt of generated lines, with blank lines and \\r\\n."""
    r = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def line() -> str:
        return " ".join(str(r.choice(x)) for x in (SUBJECTS, VERBS, OBJECTS, ENDS))

    paths = []
    for name, n in (("train", train_lines), ("valid", valid_lines), ("test", valid_lines)):
        rows = []
        for i in range(n):
            rows.append(line())
            if i % 17 == 0:
                rows.append("")  # a blank line: no tokens, skipped
        end = "\r\n" if name == "valid" else "\n"
        path = folder / f"{name}.txt"
        path.write_bytes(end.join(rows).encode("utf-8") + end.encode())
        paths.append(path)
    return paths[0], paths[1], paths[2]
