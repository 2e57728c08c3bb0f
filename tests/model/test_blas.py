"""BLAS introspection: reports the kernel family and warns about a forced older one."""

from __future__ import annotations

import pytest

from model.blas import (
    blas_info,
    set_num_threads,
    transposed_decode_is_faster,
    warn_if_slow_kernel,
)


def test_blas_info_has_the_fields() -> None:
    info = blas_info()
    assert set(info) >= {"numpy", "corename", "threads", "cpu_avx512", "env"}


@pytest.mark.parametrize(
    ("core", "avx512", "warns"),
    [("Haswell", True, True), ("SkylakeX", True, False), ("Haswell", False, False),
     (None, True, False)],
)
def test_warns_only_for_pre_avx512_kernels_on_avx512(core: str | None, avx512: bool,
                                                     warns: bool) -> None:
    info = {"corename": core, "cpu_avx512": avx512, "env": {"OPENBLAS_CORETYPE": "Haswell"}}
    msg = warn_if_slow_kernel(info)
    assert (msg is not None) == warns
    if warns:
        assert msg is not None and "OPENBLAS_CORETYPE=Haswell" in msg


def test_set_num_threads_changes_the_count_and_gives_the_old_one() -> None:
    before = set_num_threads(1)
    if before is None:
        pytest.skip("numpy does not run on its bundled OpenBLAS here")
    try:
        assert blas_info()["threads"] == 1
    finally:
        assert set_num_threads(before) == 1
    assert blas_info()["threads"] == before


@pytest.mark.parametrize(
    ("core", "transposed"),
    [("SkylakeX", True), ("Cooperlake", True), ("Haswell", False), ("Zen", False), (None, True)],
)
def test_the_decoding_layout_follows_the_kernel_family(core: str | None, transposed: bool) -> None:
    info = {"corename": core, "cpu_avx512": True, "env": {}}
    assert transposed_decode_is_faster(info) == transposed
