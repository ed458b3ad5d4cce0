"""Comparison tables and figures from summary rows and runs."""
