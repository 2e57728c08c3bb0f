"""The ``rnnlm`` command: train, evaluate, generate, import-book, download-ptb, plot.

With ``--json`` a command prints one JSON object as the last line of stdout; logs and
progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("rnnlm")


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print the human line, or the JSON object as the last line of stdout."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _score_split(
    model: Any, ids: np.ndarray, split: str, book_batching: bool, progress: bool
) -> dict[str, Any]:
    """Perplexity of an InferenceModel on one split's ids (DESIGN.md scoring conventions)."""
    from tqdm import tqdm

    from model.inference import corpus_logprobs

    L = len(ids)
    total = ((L - 1) // 350) * 350 if book_batching else L - 1
    t0 = time.perf_counter()
    bar: Any
    with tqdm(total=total, desc=f"{split}", unit="tok", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        lp = corpus_logprobs(model, ids, book_batching=book_batching, on_progress=bar.update)
    seconds = time.perf_counter() - t0
    log_prob = float(lp.astype(np.float64).sum())
    n = int(lp.size)
    return {
        "split": split,
        "book_batching": book_batching,
        "perplexity": math.exp(-log_prob / n),
        "log_prob": log_prob,
        "tokens": n,
        "seconds": seconds,
        "tokens_per_second": n / seconds if seconds > 0 else None,
    }


def _load_for_eval(weights_dir: str | Path, data_dir: str | Path | None) -> tuple[Any, Any, Path]:
    """The weights (checked once), the model built from them and the data folder."""
    from model.checkpoint import load_weights
    from model.corpus import resolve_data_dir
    from model.inference import InferenceModel

    w = load_weights(weights_dir)
    return w, InferenceModel.from_params(w.config, w.params), resolve_data_dir(data_dir)


def evaluate_split(
    weights_dir: str | Path,
    data_dir: str | Path | None,
    split: str = "test",
    book_batching: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of a weights directory on a PTB split (DESIGN.md scoring conventions)."""
    from model.corpus import load_split

    w, model, data = _load_for_eval(weights_dir, data_dir)
    ids = load_split(data, split, w.vocab)
    return {"weights": str(weights_dir), **_score_split(model, ids, split, book_batching,
                                                        progress)}


def all_metrics(
    weights_dir: str | Path, data_dir: str | Path | None, progress: bool = True
) -> dict[str, float]:
    """The four metrics of DESIGN.md's config.json (weights and each split read once)."""
    from model.corpus import load_split

    w, model, data = _load_for_eval(weights_dir, data_dir)
    out: dict[str, float] = {}
    for split in ("valid", "test"):
        ids = load_split(data, split, w.vocab)
        for book, suffix in ((False, ""), (True, "_book")):
            r = _score_split(model, ids, split, book, progress)
            out[f"{split}_perplexity{suffix}"] = round(r["perplexity"], 4)
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    """rnnlm evaluate."""
    if args.all:
        from model.checkpoint import update_metrics

        metrics = all_metrics(args.weights, args.data_dir, progress=not args.quiet)
        if args.write_metrics:
            update_metrics(args.weights, metrics)
        _emit(args, metrics, "\n".join(f"{k}: {v:.2f}" for k, v in metrics.items()))
        return 0
    r = evaluate_split(args.weights, args.data_dir, args.split, args.book_batching,
                       progress=not args.quiet)
    _emit(args, r, f"{args.split} perplexity {r['perplexity']:.2f} over {r['tokens']} tokens "
          f"({r['tokens_per_second']:.0f} tok/s)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """rnnlm generate."""
    from model.checkpoint import load_weights
    from model.inference import InferenceModel, SamplingParams, generate
    from model.vocab import tokenize

    w = load_weights(args.weights)
    model = InferenceModel.from_params(w.config, w.params)
    tok = tokenize(args.prompt, w.vocab)
    prompt = [w.vocab.eos_id, *tok.ids]
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**63))
    params = SamplingParams(
        do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty,
    )
    steps = list(generate(
        model, prompt, args.max_new_tokens, params, np.random.default_rng(seed),
        eos_id=w.vocab.eos_id, unk_id=w.vocab.unk_id, stop_at_eos=not args.no_stop_at_eos,
    ))
    words = [w.vocab.id_to_word[s.id] for s in steps]
    text = " ".join("\n" if x == "<eos>" else x for x in words).replace(" \n ", "\n").strip()
    result = {
        "prompt_tokens": tok.tokens, "generated_text": text, "tokens": words,
        "logprobs": [s.logprob for s in steps], "seed": seed,
        "finish_reason": steps[-1].finish_reason if steps else None,
    }
    _emit(args, result, (" ".join(tok.tokens) + " " + text).strip())
    return 0


def cmd_import_book(args: argparse.Namespace) -> int:
    """rnnlm import-book."""
    from model.checkpoint import import_book, save_weights
    from model.corpus import build_vocab, resolve_data_dir

    vocab = build_vocab(resolve_data_dir(args.data_dir))
    config, params = import_book(args.kind, args.file, vocab)
    out = save_weights(
        args.out, config, params, vocab, dtype=args.dtype,
        training={"source": "book", "kind": args.kind, "file": Path(args.file).name},
    )
    metrics: dict[str, float] = {}
    if not args.no_evaluate:
        from model.checkpoint import update_metrics

        metrics = all_metrics(out, args.data_dir, progress=not args.quiet)
        update_metrics(out, metrics)
    _emit(args, {"out": str(out), "model": config.to_dict(), "metrics": metrics},
          f"imported {args.file} -> {out} {metrics}")
    return 0


def cmd_download_ptb(args: argparse.Namespace) -> int:
    """rnnlm download-ptb."""
    from model.corpus import download_ptb

    download_ptb(Path(args.dir))
    _emit(args, {"dir": args.dir}, f"PTB files in {args.dir}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """rnnlm plot: training and validation perplexity against epochs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.error("rnnlm plot needs matplotlib: pip install 'rnnlm-service[plot]'")
        return 2
    records = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line]
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
    ax.set_title(args.title or Path(args.log).parent.name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    _emit(args, {"out": args.out, "epochs": len(valid)}, f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """rnnlm train (see model.train)."""
    from model.train import run_training

    result = run_training(args)
    _emit(args, result, json.dumps(result, indent=1))
    return 0 if result.get("status") in ("finished", "stopped") else 1


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    from model.train import TrainConfig, add_train_arguments

    p = argparse.ArgumentParser(prog="rnnlm", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, data: bool = True) -> None:
        sp.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        if data:
            sp.add_argument("--data-dir", default=None,
                            help="folder holding ptb.{train,valid,test}.txt "
                                 "(default: $RNNLM_DATA_DIR)")

    sp = sub.add_parser("train", help="train a BetterRnnlm on PTB (book recipe by default)")
    common(sp)
    add_train_arguments(sp, TrainConfig())
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="perplexity of a weights directory on a PTB split")
    common(sp)
    sp.add_argument("weights", help="weights directory")
    sp.add_argument("--split", choices=["train", "valid", "test"], default="test")
    sp.add_argument("--book-batching", action="store_true",
                    help="the book's eval_perplexity: 10 rows of 35, leftover targets unscored")
    sp.add_argument("--all", action="store_true",
                    help="the four metrics (valid/test x one stream/book batching)")
    sp.add_argument("--write-metrics", action="store_true",
                    help="with --all: store them in the weights' config.json")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("generate", help="generate text locally (sampling by default)")
    common(sp, data=False)
    sp.add_argument("weights", help="weights directory")
    sp.add_argument("--prompt", default="", help="text to continue")
    sp.add_argument("--max-new-tokens", type=int, default=30)
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=None)
    sp.add_argument("--top-p", type=float, default=None)
    sp.add_argument("--repetition-penalty", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    sp.add_argument("--no-stop-at-eos", action="store_true", help="continue past <eos>")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("import-book", help="import a parameter pickle saved by the book's code")
    common(sp)
    sp.add_argument("kind", choices=["rnnlm", "better"],
                    help="rnnlm: ch6 Rnnlm (6 arrays); better: BetterRnnlm (9 arrays)")
    sp.add_argument("file", help="the .pkl file")
    sp.add_argument("--out", required=True, help="weights directory to write")
    sp.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    sp.add_argument("--no-evaluate", action="store_true", help="skip measuring the metrics")
    sp.set_defaults(func=cmd_import_book)

    sp = sub.add_parser("download-ptb", help="fetch the public PTB files (needs internet)")
    common(sp, data=False)
    sp.add_argument("dir", help="folder to write ptb.{train,valid,test}.txt into")
    sp.set_defaults(func=cmd_download_ptb)

    sp = sub.add_parser("plot", help="plot a training log (needs matplotlib)")
    common(sp, data=False)
    sp.add_argument("log", help="train_log.jsonl")
    sp.add_argument("--out", required=True, help="PNG to write")
    sp.add_argument("--title", default=None)
    sp.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the rnnlm command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command in ("train", "evaluate", "import-book"):
        from model.blas import warn_if_slow_kernel

        warn_if_slow_kernel()
    from model.checkpoint import WeightsError
    from model.corpus import CorpusError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (WeightsError, CorpusError, OSError, ValueError) as e:
        # Expected failures (missing files, bad weights, bad flags) get one clear line.
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())

