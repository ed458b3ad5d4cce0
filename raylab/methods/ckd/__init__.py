"""CKD: periocular recognition by consistent knowledge distillation from faces.

``config`` (typed official defaults and the ablation switches), ``model`` (the two-branch
IR-SE network, plain torch), ``pairs`` (face / eye-band pairs and the fold roles),
``losses``, ``training`` (Ray Train), ``evaluate`` (unseen identities), ``method`` (train +
evaluate one variant), ``tracking`` (MLflow), ``experiment`` (the ``ckd_train`` job: a Ray
Tune grid over method x fold x seed, ``jobs/ckd_train.py``).
"""
