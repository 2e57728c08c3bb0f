"""lm-evaluation-harness against a live server: its numbers equal the ones our own API implies.

Starts rnnlm-serve on the shipped 2 x 650 model (or --weights), then runs
``lm_eval --model local-completions`` with ``tokenizer_backend=remote`` (no Hugging Face
tokenizer) on two tasks written here for the check:

  ptb_rolling  loglikelihood_rolling over PTB test lines from a local text file (each line a
               document); the harness's word_perplexity must equal exp(-sum / words) from
               /perplexity's log_prob of each line ("eos": false: the harness scores a
               document's tokens after the prefix <eos>, not a closing one), words counted
               as the harness's wikitext task counts them.
  ptb_choice   multiple choice: a context and two continuations, one a PTB sentence's real
               ending, one shuffled; each choice's log-likelihood must equal
               /perplexity(context + choice) - /perplexity(context), so acc must equal the
               accuracy those differences give. The contexts begin with the text "<eos>",
               which is the <eos> id: the harness sends token ids as they are, and a sentence
               of this model starts after <eos>.

Run: make interop, or .venv-interop/bin/python -m interop.check_lm_eval (its own virtual
environment with lm-eval[api]==0.4.13 and torch==2.13.0). Exit status 0 when both agree, 1
when not, 2 when something is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.load import find_data_dir, serve

ROOT = Path(__file__).resolve().parents[1]

ROLLING_YAML = """task: ptb_rolling
dataset_path: text
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
process_results: !function words.process_results
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

CHOICE_YAML = """task: ptb_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""

WORDS_PY = '''import re


def process_results(doc, results):
    (loglikelihood,) = results
    text = doc["text"]
    return {
        "word_perplexity": (loglikelihood, len(re.split(r"\\s+", text.strip()))),
        "byte_perplexity": (loglikelihood, len(text.encode("utf-8"))),
        "bits_per_byte": (loglikelihood, len(text.encode("utf-8"))),
    }
'''


def words(text: str) -> int:
    """The harness task's word count (process_results above)."""
    return len(re.split(r"\s+", text.strip()))


def lm_eval(url: str, model: str, max_len: int, tasks: str, include: Path, out: Path) -> dict:
    """Run the harness's command line; -> its results per task."""
    lm_eval_bin = Path(sys.executable).parent / "lm_eval"
    cmd = [str(lm_eval_bin), "--model", "local-completions", "--model_args",
           f"model={model},base_url={url}/v1/completions,tokenizer_backend=remote,"
           f"max_length={max_len},num_concurrent=1,max_retries=1",
           "--tasks", tasks, "--include_path", str(include), "--output_path", str(out),
           "--log_samples"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1",
                                         "HF_HUB_OFFLINE": "1"})
    (path,) = sorted(out.rglob("results_*.json"))[-1:]
    results: dict = json.loads(path.read_text())["results"]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "weights" / "ptb-650"))
    p.add_argument("--data-dir", default=None, help="PTB (default $RNNLM_DATA_DIR or "
                   "../shared/data/ptb)")
    p.add_argument("--lines", type=int, default=100, help="PTB test lines scored")
    args = p.parse_args(argv)
    data = find_data_dir(args.data_dir)
    if data is None:
        print("PTB test is needed (../shared/data/ptb or --data-dir)", file=sys.stderr)
        return 2
    test = data / "ptb.test.txt"
    lines = [x.strip() for x in test.read_text().splitlines() if x.strip()][: args.lines]
    rng = random.Random(0)
    docs = []
    for line in lines[: max(10, args.lines // 2)]:
        w = line.split()
        if len(w) < 6:
            continue
        cut = len(w) // 2
        wrong = w[cut:]
        rng.shuffle(wrong)
        if wrong == w[cut:]:
            continue
        docs.append({"context": "<eos> " + " ".join(w[:cut]),
                     "choices": [" ".join(w[cut:]), " ".join(wrong)], "label": 0})
    ok = True
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "ptb.txt").write_text("\n".join(lines) + "\n")
        with (tmp / "choice.jsonl").open("w") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        tasks = tmp / "tasks"
        tasks.mkdir()
        (tasks / "ptb_rolling.yaml").write_text(ROLLING_YAML.format(data=tmp / "ptb.txt"))
        (tasks / "ptb_choice.yaml").write_text(CHOICE_YAML.format(data=tmp / "choice.jsonl"))
        (tasks / "words.py").write_text(WORDS_PY)
        with serve("rnnlm", Path(args.weights), 32, tmp) as srv:
            url = srv.url
            info = httpx.get(url + "/v1/models").json()["data"][0]
            res = lm_eval(url, info["id"], info["max_model_len"], "ptb_rolling,ptb_choice",
                          tasks, tmp / "out")
            ppl = httpx.post(url + "/perplexity", json={"texts": lines, "eos": False},
                             timeout=600).json()["results"]
            ours_wp = math.exp(-sum(r["log_prob"] for r in ppl) / sum(map(words, lines)))
            theirs_wp = res["ptb_rolling"]["word_perplexity,none"]
            print(f"word perplexity: lm-eval {theirs_wp:.6f}, from /perplexity {ours_wp:.6f}")
            ok &= math.isclose(theirs_wp, ours_wp, rel_tol=1e-4)
            texts = [d["context"][6:] for d in docs]
            full = [f"{d['context'][6:]} {c}" for d in docs for c in d["choices"]]
            ctx = httpx.post(url + "/perplexity", json={"texts": texts, "eos": False},
                             timeout=600).json()["results"]
            both = httpx.post(url + "/perplexity", json={"texts": full, "eos": False},
                              timeout=600).json()["results"]
            right, ours_ll = 0, {}
            for i, d in enumerate(docs):
                lls = [both[2 * i + j]["log_prob"] - ctx[i]["log_prob"] for j in range(2)]
                right += int(max(range(2), key=lambda j: lls[j]) == d["label"])
                ours_ll[d["context"]] = lls
            # each choice's log-likelihood, as the harness logged it
            worst = 0.0
            for f in (tmp / "out").rglob("samples_ptb_choice_*.jsonl"):
                for line in f.read_text().splitlines():
                    sample = json.loads(line)
                    theirs = [float(r[0][0]) for r in sample["resps"]]
                    mine = ours_ll[sample["doc"]["context"]]
                    worst = max(worst, *(abs(a - b) for a, b in zip(theirs, mine, strict=True)))
            print(f"multiple choice log-likelihoods: largest difference {worst:.2e}")
            ok &= worst < 1e-3
            ours_acc = right / len(docs)
            theirs_acc = res["ptb_choice"]["acc,none"]
            print(f"multiple choice acc: lm-eval {theirs_acc:.6f}, from /perplexity "
                  f"{ours_acc:.6f} ({len(docs)} questions)")
            ok &= math.isclose(theirs_acc, ours_acc, abs_tol=1e-9)
    print("agree" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
