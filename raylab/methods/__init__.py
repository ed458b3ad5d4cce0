"""One package per method; each composes the shared layers (data, features, memory, train, eval, tracking).

The anomaly-detection methods also compose their task family, :mod:`raylab.tasks.anomaly`
(protocol, detector registry, maps, artifacts); their jobs run on :mod:`raylab.experiment`.
"""
