"""ALSUV face reconstruction transfer attack and its ablations, judged on unseen encoders.

    python jobs/alsuv_attack.py --dataset orl --data-root ../shared/data --weights-root ../shared/weights \
        --summary-json out.json
    python jobs/alsuv_attack.py --quick --data-root ../shared/data --weights-root ../shared/weights
    python jobs/alsuv_attack.py --profile full --config alsuv/ffhq256 ...   # the paper's size (GPU, FFHQ weights)
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("alsuv_attack")
