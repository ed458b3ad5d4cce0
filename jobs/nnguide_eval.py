"""NNGuide and its baselines (MSP, MaxLogit, Energy, KNN, ReAct) on an OOD benchmark.

    python jobs/nnguide_eval.py --quick                       # embedded MNIST open set
    python jobs/nnguide_eval.py --dataset cifar10 --data-root ../shared/data --network resnet56 \
        --weights ../shared/weights/cifar10_resnet56.th --summary-json out/nnguide_r56.json
    python jobs/nnguide_eval.py --dataset cifar10 --data-root ../shared/data --config nnguide/cifar10_resnet20
    ray job submit --working-dir . -- python jobs/nnguide_eval.py --quick
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("nnguide_eval")
