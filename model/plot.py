"""The training curve: training and validation perplexity against epochs, drawn from a log file."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curve(log_file: Path, png: Path, title: str | None = None) -> int:
    """Draw log_file's curve into png; -> validations drawn (ImportError: no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_file).read_text().splitlines() if line]
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
