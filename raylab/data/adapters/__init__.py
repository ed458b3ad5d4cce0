"""Dataset adapters: each turns a dataset's native layout into corpus rows.

Importing this package registers every adapter in :data:`raylab.data.DATASETS`.
"""

from raylab.data.adapters import class_folders, elpv, faces, folder, longtail_mix, magnetic_tile, ood  # noqa: F401  (registration)
