"""CKD: periocular recognition by consistent knowledge distillation from faces.

``config`` (typed official defaults and the ablation switches), ``model`` (the two-branch
IR-SE network, plain torch), ``pairs`` (face / eye-band pairs and the fold roles),
``losses``, ``training`` (Ray Train), ``evaluate`` (unseen identities), ``method`` (train +
evaluate one variant), ``sweep`` (Ray Tune grid), ``tracking`` (MLflow), ``job``.
"""
