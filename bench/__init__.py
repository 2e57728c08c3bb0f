"""Benchmarks against PyTorch (run on demand with `python -m bench.<name>`; see README.md)."""
