"""Face recognition: identities compared by the cosine of their embeddings (CKD's periocular
recogniser, the face encoders ALSUV attacks and is judged by).

Both methods test on identities never seen in training (:func:`raylab.data.splits.identity_folds`)
and score with the platform's verification and identification metrics
(:mod:`raylab.eval.biometrics`). What the family adds is what those protocols need around
the metrics: ``embedding`` turns images into embeddings the same way for every encoder,
``protocol`` draws identification galleries and names the verification thresholds.
"""
