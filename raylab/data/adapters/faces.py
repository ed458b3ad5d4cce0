"""Face corpora in ``<identity>/<images>`` folders: ORL (AT&T) faces and users' own sets.

One row per image; ``label`` is the identity's index among all identities of the dataset in
natural order (``s2`` before ``s10``), ``class_name`` the identity folder's name, and
``attributes`` carry ``identity`` and ``fold``.  Recognition is evaluated on identities
never seen in training, so the protocol is identity-disjoint folds
(:func:`raylab.data.splits.identity_folds`, a pure function of the identities, ``n_folds``
and ``split_seed``): with ``fold=k`` every image of an identity in fold ``k`` is ``test``
and every other image is ``train``; ``fold=None`` keeps all images ``train``.

Every identity needs at least two images (a genuine pair, and a gallery and a probe image);
a folder with one image, an unreadable image or an empty folder is an error naming it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError, file_record, image_files
from raylab.data.registry import DATASETS
from raylab.data.schema import records_to_table
from raylab.data.splits import identity_folds

ORL_HELP = (
    "ORL faces (AT&T Laboratories Cambridge 'The Database of Faces', also distributed as "
    "orl_faces or att_faces, e.g. on Kaggle): 40 folders s1..s40 of 10 .pgm images each. "
    "Unpack it so that <data-root>/orl_faces/s1/1.pgm exists and pass --data-root <data-root>"
)


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers numerically (``s2`` < ``s10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_identity_folders(
    root: Path,
    *,
    relative_to: Path,
    n_folds: int = 4,
    fold: int | None = None,
    split_seed: int = 0,
    min_images: int = 2,
) -> pa.Table:
    """A corpus of ``root/<identity>/<image>`` files with identity-disjoint ``fold`` as ``test``."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist")
    identities = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if len(identities) < 2:
        raise DatasetNotFoundError(
            f"{root} holds {len(identities)} identity folder(s); "
            "expected <identity>/<images> folders for at least 2 people"
        )
    files = {identity: image_files(root / identity) for identity in identities}
    too_few = [f"{root / i} ({len(f)} image)" for i, f in files.items() if len(f) < min_images]
    if too_few:
        raise ValueError(
            f"identities with fewer than {min_images} images cannot form genuine pairs or gallery/probe splits: "
            f"{', '.join(too_few)}; add images or remove these folders"
        )
    fold_of: dict[str, int] = {}
    if fold is not None:
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
        for k, members in enumerate(identity_folds(identities, n_folds, split_seed)):
            fold_of.update({identity: k for identity in members})
    records = []
    for label, identity in enumerate(identities):
        split = "test" if fold is not None and fold_of[identity] == fold else "train"
        for path in sorted(files[identity], key=lambda p: natural_key(p.name)):
            record = file_record(path, relative_to, label=label, class_name=identity, split=split)
            attributes = {"identity": identity}
            if fold is not None:
                attributes["fold"] = fold_of[identity]
            records.append(replace(record, attributes=attributes))
    return records_to_table(records)


@DATASETS.register("orl")
def load_orl(
    data_root: str | Path | None,
    n_folds: int = 4,
    fold: int | None = None,
    split_seed: int = 0,
    folder: str = "orl_faces",
) -> pa.Table:
    """ORL / AT&T faces: 40 people x 10 grey 92x112 images in ``s<N>/<k>.pgm``."""
    if data_root is None:
        raise DatasetNotFoundError(f"the orl dataset needs --data-root. {ORL_HELP}")
    root = Path(data_root) / folder
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist. {ORL_HELP}")
    return load_identity_folders(root, relative_to=Path(data_root), n_folds=n_folds, fold=fold, split_seed=split_seed)


@DATASETS.register("face_folder")
def load_face_folder(
    data_root: str | Path | None,
    folder: str | None = None,
    n_folds: int = 4,
    fold: int | None = None,
    split_seed: int = 0,
) -> pa.Table:
    """Any ``<identity>/<images>`` folder: ``data_root/folder`` (or ``data_root`` itself)."""
    if data_root is None:
        raise DatasetNotFoundError(
            "the face_folder dataset needs --data-root: a folder of <identity>/<images> subfolders "
            "(or its parent, with the folder option naming it)"
        )
    base = Path(data_root)
    root = base / folder if folder else base
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{root} does not exist: put one subfolder per person there, each holding that person's images"
        )
    return load_identity_folders(root, relative_to=root.parent, n_folds=n_folds, fold=fold, split_seed=split_seed)
