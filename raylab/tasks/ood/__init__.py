"""Out-of-distribution detection on a classifier's outputs (NNGuide and the detectors it is
compared with).

``config`` holds every detector's typed config and the registry that finds one by the
``kind`` a config names, plus the benchmark's config; ``detectors`` the detectors themselves
on one fitted-detector base (OpenOOD's postprocessors); ``benchmark`` the protocol: which
images play which role, the one score negation, and the metrics.
"""
