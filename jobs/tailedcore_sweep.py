"""TailedCore vs SoftPatch vs PatchCore on long-tailed, noisy training sets (step / pareto protocols).

python jobs/tailedcore_sweep.py --data-root ../shared/data --summary-json out.json
python jobs/tailedcore_sweep.py --data-root ../shared/data --protocols step_k1,pareto --seeds 0,1,2,3,4
python jobs/tailedcore_sweep.py --dataset mvtec --data-root /data --config tailedcore/full_wrn50
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("tailedcore_sweep")
