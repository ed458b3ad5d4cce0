"""Helpers for smoke runs: what a paper-size config needs to run without its real weights."""
