"""Out-of-distribution detection on a classifier's outputs (NNGuide and the detectors it is
compared with).

``config`` holds every detector's typed config and the registry that finds one by the
``kind`` a config names, the benchmark's and the classifier's configs; ``detectors`` the
detectors themselves on one fitted-detector base (OpenOOD's postprocessors); ``benchmark``
the protocol: which images play which role, the one score negation, and the metrics;
``classifiers`` the ID classifiers whose outputs every detector reads, ``outputs`` those
features and logits of a corpus (Ray Data, cached); ``scorer`` a classifier with a fitted
detector as a deployable MLflow model.
"""
