"""MeDS noise-ratio sweep (the flagship job).

python jobs/meds_sweep.py                       # ELPV from PyPI, local Ray, SQLite MLflow
python jobs/meds_sweep.py --dataset magnetic_tile --data-root ../shared/data --seeds 0,1,2
ray job submit --working-dir . -- python jobs/meds_sweep.py --config meds/magnetic_tile
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("meds_sweep")
