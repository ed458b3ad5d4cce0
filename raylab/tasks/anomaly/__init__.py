"""Industrial anomaly detection (PatchCore, SoftPatch, TailedCore, MeDS and its baselines).

``benchmark`` is the per-class protocol (fit on a class's possibly noisy training patches,
judge on its test images), ``experiment`` the noise-protocol sweep's axes and shared inputs,
``detectors`` the registry and the contract every detector keeps, ``memory_detector`` the
base of the memory-bank detectors (search, image scores, maps), ``patchcore`` the family's
baseline detector, ``maps`` the patch-score post-processing, ``artifacts`` what a run logs
(overlays, ROC curves, tables, models), ``scorer`` a fitted detector as a deployable MLflow
model.
"""
