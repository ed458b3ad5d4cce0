"""PatchCore on an anomaly-detection dataset, tracked in MLflow.

    python jobs/patchcore_eval.py --dataset magnetic_tile --data-root ../shared/data
    ray job submit --working-dir . -- python jobs/patchcore_eval.py --quick
"""

from raylab.methods.patchcore.job import main

if __name__ == "__main__":
    main()
