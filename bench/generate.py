"""Generation speed: model.inference's greedy decoding against PyTorch nn.LSTM stepping.

b1   one stream: ms per generated token of ``generate`` (greedy; each token's log-prob is
     computed too, as the API returns it), and of a bare loop over ``step`` + argmax
b32  32 streams stepping together through ``step`` (greedy, with log-probs): tokens/s
Torch steps nn.LSTM one token at a time with (h, c) carried, under inference_mode, with
log_softmax and argmax. Both start from the state after a short PTB prompt (computed
outside the timing), so a call of n tokens is n model evaluations on each side. Before
timing, the greedy tokens must be the same (a differing token is accepted only at a
near-tie, checked with torch fed our tokens) and the log-probs equal within 1e-4.

Run: .venv-bench/bin/python -m bench.generate [--smoke] (see bench/README.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import (
    CpuMonitor,
    Ratio,
    base_parser,
    build_torch_lm,
    find_data_dir,
    finish,
    interleave,
    lstm_config,
    millis,
    pause_of,
    print_table,
    ptb_vocab,
    random_params,
    rate,
    sentences_of_test_split,
    sizes_of,
    start,
    verdict,
)
from model.blas import transposed_decode_is_faster
from model.functions import logsumexp
from model.inference import InferenceModel, SamplingParams, generate, next_logprobs, step
from model.rnnlm import ModelConfig

TARGETS = {"b1": 3.0, "b32": 1.0}  # numpy/torch speed at 2x650 (the brief's)
GREEDY = SamplingParams(do_sample=False, ban_unk=False)
ATOL = 1e-4
TIE = 1e-4  # a different greedy token is fine only when the two log-probs are this close


def check_greedy(what: str, ours: np.ndarray, our_lp: np.ndarray, theirs: np.ndarray,
                 forced_lp: np.ndarray) -> None:
    """Same greedy tokens (n, S) as torch, and the same log-probs of our tokens."""
    # forced_lp (n, S, V) is torch's log-distribution when fed our tokens, so it is
    # comparable at every step even after a near-tie made the two streams diverge.
    n, S = ours.shape
    rows = np.arange(S)
    for i in range(n):
        lp = forced_lp[i]  # (S, V)
        np.testing.assert_allclose(our_lp[i], lp[rows, ours[i]], atol=ATOL, rtol=0,
                                   err_msg=f"{what}: log-probs differ at step {i}")
        gap = lp.max(axis=1) - lp[rows, ours[i]]  # 0 unless torch would pick another token
        assert np.all(gap < TIE), f"{what}: step {i}: torch's best beats ours by {gap.max()}"
    diff = np.argwhere(ours != theirs)
    if len(diff):
        i, s = diff[0]
        mine, other = forced_lp[i, s, ours[i, s]], forced_lp[i, s, theirs[i, s]]
        print(f"  note {what}: stream {s} differs from torch from step {i} on, at a near-tie "
              f"(log-probs {mine:.6f} vs {other:.6f})")
    else:
        print(f"  check {what}: {n} x {S} greedy tokens identical to torch; log-probs within "
              f"{ATOL:g}")


def bench_size(torch: Any, cfg: ModelConfig, sents: list[list[int]], eos: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """b1 and b32 greedy decoding of one model; -> its results."""
    print(f"\n-- random weights: {cfg.num_layers}x{cfg.hidden_size} tied, V={cfg.vocab_size}")
    params = random_params(cfg)
    im = InferenceModel.from_params(cfg, params, decode_transposed=transposed_decode_is_faster())
    tm = build_torch_lm(cfg, params).eval()
    n1 = 5 if args.smoke else 50
    n32 = 3 if args.smoke else 20
    S = 4 if args.smoke else 32
    # prompts: <eos> + the first 4 words of PTB test sentences; the state after all but
    # the last token is computed outside the timing, the last token is the first input
    prompts = [[eos, *s[:4]] for s in sents if len(s) >= 4][:S]
    ctx = [p[:-1] for p in prompts]
    last = np.array([p[-1] for p in prompts], dtype=np.int64)
    _, st = next_logprobs(im, ctx)
    with torch.inference_mode():
        _, tst = tm(torch.tensor(np.array(ctx).T))  # (T, S) -> state (L, S, H) each
    rows = np.arange(S)
    st1_np = st.select([0])  # functions never modify a state they are given

    # ---- batch 1
    def numpy_generate() -> tuple[np.ndarray, np.ndarray]:
        out = list(generate(im, [int(last[0])], n1, GREEDY, None, eos, stop_at_eos=False,
                            state=st1_np))
        return np.array([[g.id] for g in out]), np.array([[g.logprob] for g in out])

    def numpy_steps() -> tuple[np.ndarray, np.ndarray]:
        ids, s = last[:1], st1_np
        toks, lps = np.empty((n1, 1), np.int64), np.empty((n1, 1), np.float32)
        for i in range(n1):
            logits, s = step(im, ids, s)
            ids = logits.argmax(axis=1)
            toks[i], lps[i] = ids, logits[0, ids] - logsumexp(logits[0])
        return toks, lps

    def torch_loop(x0: Any, state: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = x0  # (1, S)
            toks, lps = [], []
            for _ in range(n):
                y, state = tm(x, state)  # (1, S, H)
                lp = torch.log_softmax(tm.out(y[0]), dim=-1)  # (S, V)
                tok = lp.argmax(dim=-1)  # (S,)
                toks.append(tok)
                lps.append(lp.gather(1, tok[:, None])[:, 0])
                x = tok[None, :]  # (1, S)
            return torch.stack(toks).numpy(), torch.stack(lps).numpy()

    x1 = torch.from_numpy(last[None, :1])
    st1 = (tst[0][:, :1].contiguous(), tst[1][:, :1].contiguous())

    def torch_b1() -> tuple[np.ndarray, np.ndarray]:
        return torch_loop(x1, st1, n1)

    # ---- batch S
    def numpy_b32() -> tuple[np.ndarray, np.ndarray]:
        ids, s = last, st
        toks, lps = np.empty((n32, S), np.int64), np.empty((n32, S), np.float32)
        for i in range(n32):
            logits, s = step(im, ids, s)
            ids = logits.argmax(axis=1)
            toks[i] = ids
            lps[i] = logits[rows, ids] - logsumexp(logits, axis=1)[:, 0]
        return toks, lps

    xs = torch.from_numpy(last[None, :])

    def torch_b32() -> tuple[np.ndarray, np.ndarray]:
        return torch_loop(xs, tst, n32)

    def forced(first: np.ndarray, toks: np.ndarray, state: Any) -> np.ndarray:
        """Torch's log-distributions (n, S, V) along our tokens, as one window."""
        feed = np.concatenate([first[None, :], toks[:-1]])  # (n, S)
        with torch.inference_mode():
            y, _ = tm(torch.from_numpy(feed), state)
            return torch.log_softmax(tm.out(y), dim=-1).numpy()

    a_tok, a_lp = numpy_generate()
    check_greedy("b1 generate", a_tok, a_lp, torch_b1()[0], forced(last[:1], a_tok, st1))
    b_tok, b_lp = numpy_steps()
    assert np.array_equal(a_tok, b_tok), "generate and the step loop disagree"
    np.testing.assert_allclose(a_lp, b_lp, atol=1e-5)
    c_tok, c_lp = numpy_b32()
    check_greedy(f"b{S}", c_tok, c_lp, torch_b32()[0], forced(last, c_tok, tst))

    rounds = args.rounds or (2 if args.smoke else 6)
    reps = args.reps or (1 if args.smoke else 3)
    cases: dict[str, Callable[[], object]] = {
        "b1/numpy": numpy_generate, "b1/steps": numpy_steps, "b1/torch": torch_b1,
    }
    t1 = interleave(cases, rounds, reps, pause=pause_of(args))
    tb = interleave({"b32/numpy": numpy_b32, "b32/torch": torch_b32}, rounds, reps,
                    pause=pause_of(args))
    r1, rs, rb = (Ratio.of(t1["b1/numpy"], t1["b1/torch"]),
                  Ratio.of(t1["b1/steps"], t1["b1/torch"]),
                  Ratio.of(tb["b32/numpy"], tb["b32/torch"]))
    big = cfg.hidden_size == 650 and not args.smoke
    tgt = TARGETS if big else {}
    print(f"{rounds} interleaved rounds x {reps} calls of {n1} (b1) or {n32} x {S} (b{S}) "
          "tokens; median of round medians [min-max]")
    print_table(["case", "numpy", "torch", "numpy/torch", "target"], [
        ["b1 generate, ms/token", millis(t1["b1/numpy"], n1), millis(t1["b1/torch"], n1),
         str(r1), verdict(r1.value, tgt.get("b1"))],
        ["b1 step loop, ms/token", millis(t1["b1/steps"], n1), millis(t1["b1/torch"], n1),
         str(rs), ""],
        [f"b{S} step, tok/s", rate(tb["b32/numpy"], n32 * S), rate(tb["b32/torch"], n32 * S),
         str(rb), verdict(rb.value, tgt.get("b32"))],
    ])

    def res(r: Ratio, target: float | None, **kw: float) -> dict[str, Any]:
        return {**{k: round(v, 4) for k, v in kw.items()}, "ratio": round(r.value, 3),
                "ratio_min": round(r.lo, 3), "ratio_max": round(r.hi, 3), "target": target,
                "met": None if target is None else r.value >= target}

    return {
        "b1": res(r1, tgt.get("b1"), numpy_ms_per_token=1e3 * t1["b1/numpy"].median / n1,
                  torch_ms_per_token=1e3 * t1["b1/torch"].median / n1),
        "b1_step_loop": res(rs, None, numpy_ms_per_token=1e3 * t1["b1/steps"].median / n1),
        "b32": res(rb, tgt.get("b32"), streams=S,
                   numpy_tok_s=n32 * S / tb["b32/numpy"].median,
                   torch_tok_s=n32 * S / tb["b32/torch"].median),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = base_parser(__doc__.splitlines()[0], "650,256")
    args = p.parse_args(argv)
    torch, info = start("generate: numpy greedy decoding vs torch nn.LSTM steps (float32)", args)
    monitor = CpuMonitor()
    data_dir = find_data_dir(args.data_dir)
    vocab = ptb_vocab(data_dir)
    V = len(vocab) if vocab else 10000
    eos = vocab.eos_id if vocab else 0
    sents = sentences_of_test_split(data_dir, vocab, V)
    results = {f"2x{H}": bench_size(torch, lstm_config(H, V), sents, eos, args)
               for H in sizes_of(args)}
    finish("generate", args, info, monitor, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
