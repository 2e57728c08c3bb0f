"""What BLAS numpy runs on: the OpenBLAS kernel family and thread count, for logs and /info."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# OpenBLAS kernel families without AVX-512; on a CPU that has AVX-512 they leave about half
# the matrix-product speed unused (forced, e.g., by OPENBLAS_CORETYPE=Haswell).
_PRE_AVX512 = {"haswell", "zen", "sandybridge", "nehalem", "core2", "prescott", "katmai",
               "barcelona", "bulldozer", "piledriver", "steamroller", "excavator"}


@functools.cache
def _openblas_lib() -> ctypes.CDLL | None:
    """numpy's bundled scipy-openblas library, when it is the one in use."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas*.so*")):
        try:
            return ctypes.CDLL(str(path))
        except OSError:  # pragma: no cover - a broken install
            return None
    return None


def _cpu_has_avx512() -> bool:
    """True when /proc/cpuinfo lists avx512f (Linux only; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def _openblas_call(name: str) -> Any | None:
    """An OpenBLAS function by its plain name (get_corename, ...), under either symbol style."""
    lib = _openblas_lib()
    if lib is None:
        return None
    for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "")):
        try:
            return getattr(lib, f"{prefix}_{name}{suffix}")
        except AttributeError:
            continue
    return None


def blas_info() -> dict[str, Any]:
    """Kernel family, threads and the OPENBLAS_* variables that steer them."""
    info: dict[str, Any] = {
        "numpy": np.__version__,
        "corename": None,
        "threads": None,
        "cpu_avx512": _cpu_has_avx512(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
    }
    core, threads = _openblas_call("get_corename"), _openblas_call("get_num_threads")
    if core is not None and threads is not None:
        core.restype = ctypes.c_char_p
        info["corename"] = core().decode()
        info["threads"] = int(threads())
    return info


def set_num_threads(n: int) -> int | None:
    """Have OpenBLAS use n threads from now on; the count before, or None without OpenBLAS."""
    get, put = _openblas_call("get_num_threads"), _openblas_call("set_num_threads")
    if get is None or put is None:
        return None
    before = int(get())
    put(ctypes.c_int(n))
    return before


def transposed_decode_is_faster(info: dict[str, Any] | None = None) -> bool:
    """Whether a decoding step should compute W.T @ x.T rather than x @ W (InferenceModel)."""
    # With OpenBLAS's AVX-512 kernels W.T @ x.T is faster, with its Haswell or Zen kernels
    # x @ W is (bench/README.md, "Decisions and measurements"). Another BLAS keeps the first.
    info = info or blas_info()
    return (info.get("corename") or "").lower() not in _PRE_AVX512


def warn_if_slow_kernel(info: dict[str, Any] | None = None) -> str | None:
    """Log (and return) a warning when OpenBLAS runs pre-AVX-512 kernels on an AVX-512 CPU."""
    info = info or blas_info()
    core = (info.get("corename") or "").lower()
    if info.get("cpu_avx512") and core in _PRE_AVX512:
        forced = info["env"].get("OPENBLAS_CORETYPE")
        msg = (
            f"OpenBLAS runs {info['corename']} kernels on a CPU with AVX-512"
            + (f" because OPENBLAS_CORETYPE={forced} is set" if forced else "")
            + "; matrix products may run at about half speed. Unset OPENBLAS_CORETYPE to let "
            "OpenBLAS pick the kernels for this CPU."
        )
        logger.warning(msg)
        return msg
    return None
