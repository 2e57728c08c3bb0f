"""Settings: defaults, RNNLM_* environment variables, the packaged weights path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import app
from app.config import DEFAULT_WEIGHTS, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNNLM_WEIGHTS", raising=False)
    s = Settings()
    assert s.weights == DEFAULT_WEIGHTS
    package_root = Path(app.__file__).resolve().parents[1]
    assert package_root / "weights" / "ptb-650-awd" == DEFAULT_WEIGHTS
    assert (s.host, s.port, s.log_level) == ("127.0.0.1", 8000, "info")
    assert s.limits() == {
        "max_texts": 256, "max_text_chars": 20000, "max_request_tokens": 16384,
        "max_body_bytes": 1048576, "max_new_tokens": 512, "default_max_new_tokens": 20,
        "max_stop_sequences": 4, "max_top_n_tokens": 5,
        "max_targets": 100, "max_top_k": 100, "request_timeout_s": 60.0,
    }  # fmt: skip
    assert (s.max_batch_size, s.max_batch_wait_ms, s.queue_size, s.state_cache_mb) == (
        32,
        2.0,
        256,
        64.0,
    )
    assert s.blas_threads is None


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RNNLM_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("RNNLM_MAX_TEXTS", "3")
    monkeypatch.setenv("RNNLM_PORT", "9001")
    monkeypatch.setenv("RNNLM_DATA_DIR", "/elsewhere")  # the model's variable is not ours
    s = Settings()
    assert (s.weights, s.max_texts, s.port) == (tmp_path, 3, 9001)
    assert Settings(max_texts=5).max_texts == 5  # arguments win over the environment


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLM_MAX_TEXTS", "0")
    with pytest.raises(ValidationError, match="max_texts"):
        Settings()
    with pytest.raises(ValidationError):
        Settings(log_level="loud")  # type: ignore[arg-type]
