"""MeDS: Memory-Distilled Selection.

Modules: ``config`` (typed settings), ``partial_memory`` (stage 1), ``model``, ``training``,
``selection`` and ``method`` (stages 2 and 3), ``experiment`` (the ``meds_sweep`` job). The
package imports none of them, so ``jobs/meds_sweep.py --help`` does not load torch.
"""
