"""ALSUV (ECCV 2024): face reconstruction transfer attack with averaged latent searches and
unsupervised validation, run as parallel Ray tasks and judged on unseen encoders."""
