"""One package per method; each composes the shared layers (data, features, memory, train, eval, tracking).

The anomaly-detection methods share ``anomaly_maps`` (post-processing) and ``anomaly_benchmark``
(the per-class protocol); their jobs run on :mod:`raylab.experiment`.
"""
