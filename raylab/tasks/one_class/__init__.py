"""One-class novelty detection: one class is normal, every other class is novel (DCAE and the
plain autoencoder it is compared with).

``config`` holds the protocol's typed config; ``protocol`` the corpora by job name, decoded
once to arrays and split per normal class (the split itself is
:func:`raylab.data.protocols.one_class.split_per_class`).
"""
