"""From a sweep's best run to a service.

A fitted anomaly detector leaves its run as an MLflow model (:mod:`raylab.deploy.anomaly_model`)
that carries everything needed to score an image: the backbone's weights, the detector's
state and the decision threshold, each file checked against a manifest when it is loaded.
``raylab predict`` scores folders with it on Ray Data (:mod:`raylab.deploy.batch`).
"""
