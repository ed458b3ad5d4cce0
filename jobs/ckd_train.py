"""CKD (face -> periocular consistent knowledge distillation) and its ablations on Ray Train.

python jobs/ckd_train.py --dataset orl --data-root ../shared/data --quick
python jobs/ckd_train.py --dataset orl --data-root ../shared/data --seeds 0,1,2 --summary-json out/ckd.json
python jobs/ckd_train.py --dataset face_folder --data-root /path/to/<identity>/<images> --config ckd/orl
ray job submit --working-dir . -- python jobs/ckd_train.py --config ckd/orl_full --data-root ...
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("ckd_train")
