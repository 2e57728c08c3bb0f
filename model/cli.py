"""The ``rnnlm`` command, the one place that parses arguments: train, evaluate, score,
generate, import-book, download-ptb, plot.

With ``--json`` a command prints one JSON object as the last line of stdout; logs and
progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print the human line, or the JSON object as the last line of stdout."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """rnnlm evaluate."""
    from model.evaluate import all_metrics, evaluate_split

    if args.all:
        metrics = all_metrics(args.weights, args.data_dir, progress=not args.quiet)
        if args.write_metrics:
            from model.weights import update_metrics

            update_metrics(args.weights, metrics)
        _emit(args, metrics, "\n".join(f"{k}: {v:.2f}" for k, v in metrics.items()))
        return 0
    if args.file is not None:
        from model.evaluate import evaluate_file

        if args.per_line and args.book_batching:
            raise ValueError("--per-line and --book-batching are exclusive")
        r = evaluate_file(args.weights, Path(args.file), args.book_batching, args.per_line,
                          progress=not args.quiet)
        what = Path(args.file).name
    else:
        if args.per_line:
            raise ValueError("--per-line needs --file")
        r = evaluate_split(args.weights, args.data_dir, args.split, args.book_batching,
                           progress=not args.quiet)
        what = args.split
    _emit(args, r, f"{what} perplexity {r['perplexity']:.2f} over {r['tokens']} tokens "
          f"({r['tokens_per_second']:.0f} tok/s)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """rnnlm score (see model.score_run and model.score_ray)."""
    from model.scorer import ScoreOptions

    opts = ScoreOptions(
        format=args.format, field=args.field, eos=not args.no_eos,
        return_tokens=args.return_tokens, keep_text=args.keep_text, on_error=args.on_error,
    )
    out = Path(args.out) if args.out else None
    if args.json and out is None and args.out_dir is None:
        raise ValueError("--json needs --out or --out-dir (standard output holds the scores)")
    inputs = tuple(args.inputs) or ("-",)
    if args.engine == "ray":
        from model.score_ray import RayRun, run_ray

        if args.threads is not None:
            raise ValueError("--threads is for the local engine (Ray scores on --workers actors)")
        result = run_ray(RayRun(
            weights=Path(args.weights), inputs=inputs, out=out,
            out_dir=Path(args.out_dir) if args.out_dir else None, out_format=args.out_format,
            options=opts, address=args.ray_address, actors=args.workers, resume=args.resume,
            progress=not args.quiet, window=args.window,
        ))
    else:
        from model.score_run import ScoreRun, run_score

        if args.out_dir is not None or args.ray_address is not None:
            raise ValueError("--out-dir and --ray-address need --engine ray")
        result = run_score(ScoreRun(
            weights=Path(args.weights), inputs=inputs, out=out, options=opts,
            workers=1 if args.workers is None else args.workers, threads=args.threads,
            resume=args.resume, progress=not args.quiet, window=args.window,
        ))
    if args.json:
        _emit(args, result, "")
    if result.get("status") == "stopped":
        return 130 if result.get("signal") == "SIGINT" else 143
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """rnnlm generate."""
    from model.inference import InferenceModel, SamplingParams, generate
    from model.normalize import tokenize
    from model.weights import load_weights

    w = load_weights(args.weights)
    model = InferenceModel.from_params(w.config, w.params)
    tok = tokenize(args.prompt, w.vocab, w.normalizer)
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
    from model.book import import_book
    from model.corpus import build_vocab, resolve_data_dir
    from model.evaluate import all_metrics
    from model.weights import save_weights, update_metrics

    vocab = build_vocab(resolve_data_dir(args.data_dir))
    config, params = import_book(args.kind, args.file, vocab)
    out = save_weights(
        args.out, config, params, vocab, dtype=args.dtype,
        training={"source": "book", "kind": args.kind, "file": Path(args.file).name},
    )
    metrics: dict[str, float] = {}
    if not args.no_evaluate:
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
    from model.plot import plot_curve, validation_table

    if args.table:
        table = validation_table([Path(x) for x in args.log])
        _emit(args, {"table": table}, table)
        return 0
    if args.out is None or len(args.log) != 1:
        raise ValueError("a plot takes one log and --out (several logs: --table)")
    try:
        epochs = plot_curve(Path(args.log[0]), Path(args.out), args.title)
    except ImportError:
        logger.error("rnnlm plot needs matplotlib: pip install 'rnnlm-service[plot]'")
        return 2
    _emit(args, {"out": args.out, "epochs": epochs}, f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """rnnlm train (see model.run)."""
    from model.run import RunOptions, run_training
    from model.train import TrainConfig

    opts = RunOptions(
        out=Path(args.out), data_dir=args.data_dir,
        run_dir=Path(args.run_dir) if args.run_dir else None, resume=args.resume,
        init_from=args.init_from, max_minutes=args.max_minutes, dtype=args.dtype,
        final_eval=not args.no_final_eval, progress=not args.quiet,
        train_file=Path(args.train_file) if args.train_file else None,
        valid_file=Path(args.valid_file) if args.valid_file else None,
        test_file=Path(args.test_file) if args.test_file else None,
        normalizer=args.normalizer, lowercase=args.lowercase, vocab_size=args.vocab_size,
        min_count=args.min_count,
    )
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    result = run_training(opts, given)
    _emit(args, result, json.dumps(result, indent=1))
    return 0 if result.get("status") in ("finished", "stopped") else 1


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def add_train_arguments(p: argparse.ArgumentParser, defaults: Any) -> None:
    """Every TrainConfig field as a flag (None = the recipe's default, or the run state's)."""
    from model.train import RECIPES

    p.add_argument("--out", required=True, help="weights directory to write (best validation)")
    p.add_argument("--run-dir", default=None,
                   help="run state and log folder (default ~/.cache/rnnlm/runs/<out name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run state in --run-dir (or --init-from)")
    p.add_argument("--init-from", default=None,
                   help="with --resume and no run state: start from a weights directory")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly, saving the run state, after this many minutes")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float32",
                   help="dtype of the written weights")
    p.add_argument("--no-final-eval", action="store_true",
                   help="skip measuring the four metrics when the run finishes")
    own = p.add_argument_group("a corpus of one's own (instead of PTB's --data-dir)")
    own.add_argument("--train-file", default=None, help="UTF-8 text to train on, a line a text")
    own.add_argument("--valid-file", default=None, help="UTF-8 text to validate on")
    own.add_argument("--test-file", default=None, help="UTF-8 text for the final test metrics")
    own.add_argument("--normalizer", choices=["plain", "ptb"], default=None,
                     help="how text becomes tokens (default plain; stored in the weights)")
    own.add_argument("--lowercase", action="store_true", help="plain: lower-case every token")
    own.add_argument("--vocab-size", type=int, default=None,
                     help="tokens in the vocabulary, <eos> and <unk> included (default 10000)")
    own.add_argument("--min-count", type=int, default=None,
                     help="instead of --vocab-size: every token seen at least this often")
    for f in fields(defaults):
        flag = "--" + f.name.replace("_", "-")
        book = getattr(defaults, f.name)
        awd = RECIPES["awd"].get(f.name, book)
        default = book if awd == book else f"{book}; awd {awd}"
        if f.name == "recipe":
            p.add_argument(flag, choices=sorted(RECIPES), default=None,
                           help="the defaults of every other value: book (Zaremba et al. 2014, "
                           "the book's) or awd (Merity et al. 2017); (default book)")
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="{true,false}",
                           help=f"(default {default})")
        else:
            # f.type is a string here (postponed annotations): "int", "float | None", ...
            kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
            p.add_argument(flag, type=kind, default=None, help=f"(default {default})")


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    from model.score_run import WINDOW_LINES
    from model.train import TrainConfig

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

    sp = sub.add_parser("train", help="train a BetterRnnlm on PTB or text files of one's own "
                        "(the book's recipe by default)",
                        description="Ctrl-C or SIGTERM stops after the current step and SIGUSR1 "
                        "at the end of the current epoch, both saving the run state that "
                        "--resume continues.")
    common(sp)
    add_train_arguments(sp, TrainConfig())
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="perplexity of a weights directory on a PTB split "
                        "or a text file")
    common(sp)
    sp.add_argument("weights", help="weights directory")
    sp.add_argument("--split", choices=["train", "valid", "test"], default="test")
    sp.add_argument("--book-batching", action="store_true",
                    help="the book's eval_perplexity: 10 rows of 35, leftover targets unscored")
    sp.add_argument("--all", action="store_true",
                    help="the four metrics (valid/test x one stream/book batching)")
    sp.add_argument("--write-metrics", action="store_true",
                    help="with --all: store them in the weights' config.json")
    sp.add_argument("--file", default=None,
                    help="any UTF-8 text file instead of a PTB split, normalised as the "
                    "weights say; one stream by default")
    sp.add_argument("--per-line", action="store_true",
                    help="with --file: every line scored as the API scores a text, aggregated")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser(
        "score", help="score texts in bulk: text or JSON lines in, one JSON line of "
        "/perplexity's numbers out per input line, in input order",
        description="Score every input line as POST /perplexity scores a text (the same "
        "numbers), writing JSON lines in input order. Ctrl-C stops after the current window; "
        "--resume continues an --out file after its last complete line.")
    common(sp, data=False)
    sp.add_argument("weights", help="weights directory")
    sp.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="input files, read in order and numbered across (none or -: stdin)")
    sp.add_argument("--format", choices=["text", "jsonl"], default="text",
                    help="text: every line is a text; jsonl: every line is a JSON object "
                    "whose --field holds the text (default text)")
    sp.add_argument("--field", default="text", help="jsonl: the field holding the text "
                    "(default text); the other fields are copied to the output")
    sp.add_argument("--out", default=None, help="write here instead of standard output")
    sp.add_argument("--resume", action="store_true",
                    help="with --out: continue after its last complete line")
    sp.add_argument("--return-tokens", action="store_true",
                    help="add each token's log-probability (tokens: [{token, id, logprob, oov}])")
    sp.add_argument("--no-eos", action="store_true",
                    help="do not predict the closing <eos> (the API's \"eos\": false)")
    sp.add_argument("--keep-text", action="store_true", help="copy the text into the output")
    sp.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                    help="a line that cannot be read: stop (exit status 2, every earlier line "
                    "written) or skip (write {line, error} and go on); default stop")
    sp.add_argument("--workers", type=int, default=None,
                    help="processes scoring in parallel, one thread each; default 1 (with "
                    "--engine ray: the actors, default one per CPU of the cluster)")
    sp.add_argument("--threads", type=int, default=None,
                    help="one process's scoring threads, each with one BLAS thread and its own "
                    "windows (default: one per CPU it may use)")
    sp.add_argument("--window", type=int, default=WINDOW_LINES,
                    help="input lines scored together, sharing their common prefixes, and "
                    f"written (default {WINDOW_LINES}); the unit Ctrl-C waits for and a worker "
                    "takes")
    sp.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local processes, or Ray Data (pip install 'rnnlm-service[ray]')")
    sp.add_argument("--ray-address", default=None,
                    help="with --engine ray: join this cluster (default: start a local Ray)")
    sp.add_argument("--out-dir", default=None,
                    help="with --engine ray: write part files here (each row with its line)")
    sp.add_argument("--out-format", choices=["jsonl", "parquet"], default="jsonl",
                    help="with --out-dir: the part files' format (default jsonl)")
    sp.set_defaults(func=cmd_score)

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

    sp = sub.add_parser("plot", help="plot a training log (needs matplotlib), or print "
                        "several runs' validation side by side (--table)")
    common(sp, data=False)
    sp.add_argument("log", nargs="+", help="train_log.jsonl (several with --table)")
    sp.add_argument("--out", default=None, help="PNG to write")
    sp.add_argument("--table", action="store_true",
                    help="print a Markdown table of validation perplexity by epoch, a column "
                    "per log, instead of a plot")
    sp.add_argument("--title", default=None)
    sp.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the rnnlm command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "score" and not any(x.startswith("-") for x in extra):
        args.inputs = [*args.inputs, *extra]  # INPUT after the flags: rnnlm score W --out o in
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command in ("train", "evaluate", "score", "import-book"):
        from model.blas import warn_if_slow_kernel

        warn_if_slow_kernel()
    from model.corpus import CorpusError
    from model.weights import WeightsError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (WeightsError, CorpusError, OSError, ValueError) as e:
        # Expected failures (missing or bad files, bad weights, bad flags) get one clear
        # line and exit status 2, as argparse's own usage errors do.
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())

