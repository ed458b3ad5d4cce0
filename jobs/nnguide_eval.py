"""NNGuide and its baselines (MSP, MaxLogit, Energy, KNN, ReAct variants) on an OOD benchmark.

    python jobs/nnguide_eval.py --quick                       # embedded MNIST open set
    python jobs/nnguide_eval.py --dataset cifar10 --data-root ../shared/data --network resnet56 \
        --weights ../shared/weights/cifar10_resnet56.th --summary-json out/nnguide_r56.json
    ray job submit --working-dir . -- python jobs/nnguide_eval.py --quick
"""

from raylab.methods.nnguide.job import main

if __name__ == "__main__":
    main()
