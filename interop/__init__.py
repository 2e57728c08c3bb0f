"""Checks of real third-party clients against a live server (make interop)."""
