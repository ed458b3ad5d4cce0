"""dlib's ResNet face encoder, ALSUV's second unseen black-box encoder, on real ORL faces."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.shared_data


def test_dlib_encoder_tells_unseen_orl_identities_apart(shared_data):
    from raylab.eval.biometrics import verification_metrics
    from raylab.methods.alsuv.config import CanvasConfig, DataConfig, dlib_encoder
    from raylab.methods.alsuv.faces import load_protocol
    from raylab.methods.alsuv.model.encoders import make_encoder

    protocol = load_protocol(DataConfig(canvas=CanvasConfig(size=64)), shared_data)
    encoder = make_encoder(dlib_encoder(), name="dlib_resnet")  # the unseen encoder of the default config
    with torch.no_grad():
        embeddings = encoder(torch.as_tensor(protocol.held_out.images), flip=False).numpy()
    assert embeddings.shape == (len(protocol.held_out.images), 128)
    metrics = verification_metrics(embeddings, protocol.held_out.identities)
    # Unaligned 64 px ORL canvases as dlib chips: about 0.19 measured; chance is 0.5.
    assert metrics["eer"] < 0.3, metrics


def test_dlib_encoder_refuses_what_is_not_a_chip():
    from raylab.methods.alsuv.model.dlib_encoder import DlibResNet

    with pytest.raises(ValueError, match=r"\(n, 3, 150, 150\) chips, got \(2, 3, 64, 64\)"):
        DlibResNet()(torch.zeros(2, 3, 64, 64))


def test_a_dlib_model_file_that_does_not_exist_is_named(tmp_path):
    import dataclasses

    from raylab.methods.alsuv.config import dlib_encoder
    from raylab.methods.alsuv.model.encoders import make_encoder

    with pytest.raises(RuntimeError, match="missing.dat"):
        make_encoder(
            dataclasses.replace(dlib_encoder(), weights="missing.dat"), name="dlib_resnet", weights_root=tmp_path
        )
