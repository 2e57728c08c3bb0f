"""An independent scorer for tests: a plain per-token float64 loop over the weight arrays."""

from __future__ import annotations

import numpy as np

from model.rnnlm import ModelConfig


def naive_log_distributions(
    params: dict[str, np.ndarray], cfg: ModelConfig, ids: list[int]
) -> np.ndarray:
    """(len(ids), V): the next-token log-distribution after each prefix ids[: t + 1]."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    H = cfg.hidden_size
    h = [np.zeros(H) for _ in range(cfg.num_layers)]
    c = [np.zeros(H) for _ in range(cfg.num_layers)]
    out_W = p["embed.W"].T if cfg.tied else p["affine.W"]
    rows = []
    for t in ids:
        x = p["embed.W"][t]
        for k in range(cfg.num_layers):
            a = x @ p[f"lstm.{k}.Wx"] + h[k] @ p[f"lstm.{k}.Wh"] + p[f"lstm.{k}.b"]
            f = 1 / (1 + np.exp(-a[:H]))
            g = np.tanh(a[H : 2 * H])
            i = 1 / (1 + np.exp(-a[2 * H : 3 * H]))
            o = 1 / (1 + np.exp(-a[3 * H :]))
            c[k] = f * c[k] + g * i
            h[k] = o * np.tanh(c[k])
            x = h[k]
        z = x @ out_W + p["affine.b"]
        m = z.max()
        rows.append(z - m - np.log(np.exp(z - m).sum()))
    return np.array(rows)


def naive_logprobs(params: dict[str, np.ndarray], cfg: ModelConfig, ids: list[int]) -> np.ndarray:
    """log P(ids[t+1] | ids[: t + 1]) for t < len(ids) - 1."""
    if len(ids) < 2:
        return np.zeros(0)
    dist = naive_log_distributions(params, cfg, ids[:-1])
    return dist[np.arange(len(ids) - 1), ids[1:]]


def naive_next(params: dict[str, np.ndarray], cfg: ModelConfig, ids: list[int]) -> np.ndarray:
    """The next-token log-distribution after all of ids."""
    return naive_log_distributions(params, cfg, ids)[-1]
