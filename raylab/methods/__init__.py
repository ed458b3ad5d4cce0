"""One package per method; each composes the shared layers (data, features, memory, train, eval,
tracking) and its task family (:mod:`raylab.tasks`), and runs its job on :mod:`raylab.experiment`.

Every package has the same rooms: ``README.md`` (the paper, what is faithful, every
documented choice, measured results and the commands that produced them), ``config.py``
(typed configs and profiles; PatchCore's live in its family), ``experiment.py`` (the trial),
and where the method has them ``model.py`` (plain torch modules) and ``training.py`` (the
per-worker Ray Train loop). A method with more than one kind of network (ALSUV's generator
and face encoders) makes ``model`` and ``training`` packages with one module per network.
"""
