"""PatchCore on an anomaly-detection dataset over noise ratios x seeds, tracked in MLflow.

python jobs/patchcore_eval.py --dataset magnetic_tile --data-root ../shared/data
python jobs/patchcore_eval.py --dataset longtail_mix --data-root ../shared/data   # picks up patchcore/longtail_mix
ray job submit --working-dir . -- python jobs/patchcore_eval.py --quick
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("patchcore_eval")
