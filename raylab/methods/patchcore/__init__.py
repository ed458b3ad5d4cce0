"""PatchCore's own job (``patchcore_eval``): the per-class benchmark of the detector on its
own. The detector and its config are the anomaly family's baseline,
:mod:`raylab.tasks.anomaly.patchcore`."""
