"""From a sweep's best run to a service: what every deployable scorer shares.

A fitted detector leaves its run as an MLflow model that carries everything needed to score
an image, each file checked against a manifest when it is loaded (:mod:`raylab.deploy.scorer_folder`).
This package knows no method: each task family or method keeps its own scorer beside its
detectors (:mod:`raylab.tasks.anomaly.scorer`, :mod:`raylab.tasks.ood.scorer`,
:mod:`raylab.methods.dcae.scorer`) and builds it on this package, so a new family deploys
without touching it. ``raylab predict`` scores folders with any logged model on Ray Data
(:mod:`raylab.deploy.batch`).
"""
