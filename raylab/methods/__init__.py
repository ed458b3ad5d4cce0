"""One package per method; each composes the shared layers (data, features, memory, train, eval, tracking).

The anomaly-detection methods share ``anomaly_maps`` (post-processing), ``anomaly_benchmark``
(the per-class protocol) and ``anomaly_job`` (settings as Ray tasks tracked in MLflow).
"""
