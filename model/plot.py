"""The training curve: training and validation perplexity against epochs, drawn from a log
file; and several runs' validation side by side as a table."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curve(log_file: Path, png: Path, title: str | None = None) -> int:
    """Draw log_file's curve into png; -> validations drawn (ImportError: no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_log(log_file)
    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "valid"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["epoch"] for r in train], [r["ppl"] for r in train], lw=0.8,
            label="training (dropout on)")
    ax.plot([r["epoch"] for r in valid], [r["valid_ppl"] for r in valid], "o-",
            label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title(title or Path(log_file).parent.name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return len(valid)


def _read_log(log_file: Path) -> list[dict]:
    """The records of a training log, in order."""
    return [json.loads(line) for line in Path(log_file).read_text().splitlines() if line]


def validation_table(log_files: list[Path]) -> str:
    """A Markdown table of validation perplexity by epoch, a column per run (named by the
    log's folder); an averaged (NT-ASGD) figure is marked "a", each run's best is bold."""
    runs = {Path(f).parent.name: {r["epoch"]: r for r in _read_log(f) if r.get("type") == "valid"}
            for f in log_files}
    epochs = sorted({e for by_epoch in runs.values() for e in by_epoch})
    best = {name: min((r["valid_ppl"] for r in v.values()), default=None)
            for name, v in runs.items()}
    rows = ["| epoch | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    for e in epochs:
        cells = []
        for name, by_epoch in runs.items():
            r = by_epoch.get(e)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['valid_ppl']:.2f}" + (" a" if r.get("averaged") else "")
            cells.append(f"**{cell}**" if r["valid_ppl"] == best[name] else cell)
        rows.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
