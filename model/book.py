"""The one place a pickle is read: the book's .pkl parameter files, imported as float32 arrays.

The book saves a pickled list of numpy arrays. ``load_book_pickle`` reads it with an unpickler
that resolves only the four numpy globals an ndarray needs, so a hostile file cannot run code;
``import_book`` checks the arrays against the book's Rnnlm or BetterRnnlm layout.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from model.rnnlm import ModelConfig
from model.vocab import Vocab
from model.weights import WeightsError

logger = logging.getLogger(__name__)

# numpy 2 renamed numpy.core to numpy._core; the old name still resolves but warns, so both
# spellings map straight to the new module's function
_RECONSTRUCT: Any = importlib.import_module("numpy._core.multiarray")._reconstruct
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BookUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a plain ndarray needs, so nothing else can run."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global; refuse every other one."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._path}: refused global {module}.{name}: a book parameter file holds "
                "only numpy arrays (the file is not from the book or was tampered with)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids, which a list of arrays never uses."""
        raise WeightsError(f"{self._path}: refused persistent id {pid!r}")


def load_book_pickle(path: str | Path) -> list[np.ndarray]:
    """The list of arrays in a book .pkl, read with the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            obj = _BookUnpickler(f, path).load()
    except WeightsError:
        raise
    except Exception as e:  # any parse failure of untrusted bytes means a bad file
        raise WeightsError(f"{path}: cannot read pickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, list | tuple):
        raise WeightsError(f"{path}: expected a list of numpy arrays, got {type(obj).__name__}")
    arrays: list[np.ndarray] = []
    for i, a in enumerate(obj):
        if type(a) is not np.ndarray:
            raise WeightsError(f"{path}: item {i} is {type(a).__name__}, expected a numpy array")
        if a.dtype.kind != "f":
            raise WeightsError(f"{path}: item {i} has dtype {a.dtype}, expected floating point")
        arrays.append(a)
    return arrays


def _expect_shape(path: Path, index: int, what: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise WeightsError unless array number index has the expected shape."""
    if a.shape != shape:
        raise WeightsError(f"{path}: array {index} ({what}) has shape {a.shape}, expected {shape}")


def import_book(
    kind: Literal["rnnlm", "better"], pkl_path: str | Path, vocab: Vocab
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and float32 params from the book's Rnnlm ("rnnlm") or BetterRnnlm ("better") .pkl."""
    pkl_path = Path(pkl_path)
    if kind not in ("rnnlm", "better"):
        raise ValueError(f"kind must be 'rnnlm' or 'better', got {kind!r}")
    arrays = load_book_pickle(pkl_path)
    expected_count = 6 if kind == "rnnlm" else 9
    if len(arrays) != expected_count:
        raise WeightsError(
            f"{pkl_path}: holds {len(arrays)} arrays, the book's "
            f"{'Rnnlm' if kind == 'rnnlm' else 'BetterRnnlm'} saves {expected_count}"
        )
    embed = arrays[0]
    if embed.ndim != 2:
        raise WeightsError(f"{pkl_path}: array 0 (embedding W) has shape {embed.shape}, want 2-D")
    V, D = embed.shape
    wh = arrays[2]
    if wh.ndim != 2:
        raise WeightsError(f"{pkl_path}: array 2 (LSTM Wh) has shape {wh.shape}, want 2-D")
    H = wh.shape[0]
    if len(vocab) != V:
        raise WeightsError(
            f"{pkl_path}: embedding has {V} rows, the vocabulary has {len(vocab)} words"
        )

    # the book's order; gates inside 4H are f, g, i, o in both, so no permutation is needed
    if kind == "rnnlm":
        layout: list[tuple[str, str, tuple[int, ...]]] = [
            ("embed.W", "embedding W", (V, D)),
            ("lstm.0.Wx", "LSTM Wx", (D, 4 * H)),
            ("lstm.0.Wh", "LSTM Wh", (H, 4 * H)),
            ("lstm.0.b", "LSTM b", (4 * H,)),
            ("affine.W", "affine W", (H, V)),
            ("affine.b", "affine b", (V,)),
        ]
    else:
        layout = [
            ("embed.W", "embedding W", (V, D)),
            ("lstm.0.Wx", "LSTM 1 Wx", (D, 4 * H)),
            ("lstm.0.Wh", "LSTM 1 Wh", (H, 4 * H)),
            ("lstm.0.b", "LSTM 1 b", (4 * H,)),
            ("lstm.1.Wx", "LSTM 2 Wx", (H, 4 * H)),
            ("lstm.1.Wh", "LSTM 2 Wh", (H, 4 * H)),
            ("lstm.1.b", "LSTM 2 b", (4 * H,)),
            ("affine.W", "affine W (tied: embedding W transposed)", (D, V)),
            ("affine.b", "affine b", (V,)),
        ]
    for i, ((_, what, shape), a) in enumerate(zip(layout, arrays, strict=True)):
        _expect_shape(pkl_path, i, what, a, shape)

    if kind == "rnnlm":
        config = ModelConfig(
            vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=1, tied=False, dropout=0.0
        )
    else:
        if D != H:
            raise WeightsError(
                f"{pkl_path}: tied weights need embedding size == hidden size, got {D} and {H}"
            )
        # the book saves the shared embedding twice (W and W.T); any difference means the
        # file is not a tied BetterRnnlm and dropping the copy would silently change the model
        if not np.array_equal(arrays[7], embed.T):
            n = int(np.count_nonzero(arrays[7] != embed.T))
            raise WeightsError(
                f"{pkl_path}: array 7 (affine W) is not the embedding W transposed "
                f"({n} elements differ); not a tied BetterRnnlm"
            )
        config = ModelConfig(
            vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=2, tied=True, dropout=0.5
        )

    shapes = config.param_shapes()
    params: dict[str, np.ndarray] = {}
    for (name, what, _), a in zip(layout, arrays, strict=True):
        if name not in shapes:
            continue
        p = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(p).all():
            raise WeightsError(f"{pkl_path}: {what} has non-finite values")
        params[name] = p
    logger.info("imported book %s from %s: V=%d D=%d H=%d", kind, pkl_path, V, D, H)
    return config, params
