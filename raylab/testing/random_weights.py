"""Random-weight files in each loader's real on-disk format.

A smoke run proves that a paper-size config runs end to end: sizes agree, the loader reads
its format, every stage fits together. Pretrained files are large and not always reachable
offline, so these writers produce files with the real architecture, the real key names and
the real container format, filled with a seeded random initialisation. Metrics from them
mean nothing; that the job reaches its summary means a lot.
"""

from __future__ import annotations

from pathlib import Path

import torch


def timm_safetensors(name: str, path: Path, *, seed: int = 0, **kwargs) -> Path:
    """A timm model's state dict as ``.safetensors`` (the format timm's hub weights ship in)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def torchvision_pth(name: str, path: Path, *, seed: int = 0) -> Path:
    """A torchvision model's state dict as ``.pth`` (the format of torchvision's download)."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    torch.save(model.state_dict(), path)
    return path


def timm_pth(name: str, path: Path, *, seed: int = 0, **kwargs) -> Path:
    """A timm model's state dict as a ``.pth`` of ``torch.save`` (timm's key layout, no wrapper dict).

    The form of a face model trained with timm and saved as ``model.state_dict()``, which is
    what ALSUV's validation Swin-T (``kind: timm`` with ``weights``) loads.
    """
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    torch.save(model.state_dict(), path)
    return path


def arcface_iresnet_pth(path: Path, *, depth: int = 100, seed: int = 0) -> Path:
    """An ArcFace IResNet in insightface arcface_torch's ``backbone.pth`` layout: a plain state dict.

    The released ``ms1mv3_arcface_r100_fp16/backbone.pth`` is ``torch.save(backbone.state_dict())``
    of their ``iresnet100`` (keys ``conv1.weight``, ``bn1.*``, ``prelu.weight``,
    ``layer1.0.bn1.*`` ... ``bn2.*``, ``fc.*``, ``features.*``), which
    :class:`raylab.nets.iresnet.IResNet` reproduces name for name, so writing its state dict
    writes that layout. The BatchNorm running statistics are randomised too, so that a
    loader that skipped them would embed differently from one that read them.
    """
    from raylab.nets.iresnet import iresnet

    torch.manual_seed(seed)
    model = iresnet(depth)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def smoke_weight_arguments(config: str, folder: Path) -> list[str]:
    """The job arguments that point a packaged full-size config at random weights written to ``folder``.

    Written once per folder (a second call reuses the files), so a test tier or a benchmark
    that runs a config twice pays for the writing once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if config == "meds/full_dinov2":
        path = folder / "dinov2_vitb14_reg4.safetensors"
        if not path.is_file():
            timm_safetensors("vit_base_patch14_reg4_dinov2.lvd142m", path, img_size=392)
        return ["--set", f"features.backbone.weights={path}"]
    if config == "tailedcore/full_wrn50":
        path = folder / "wide_resnet50_2.pth"
        if not path.is_file():
            torchvision_pth("wide_resnet50_2", path)
        return ["--set", f"features.backbone.weights={path}"]
    if config == "alsuv/ffhq256":
        path = folder / "stylegan2-ffhq-256_550000.pt"
        if not path.is_file():
            stylegan2_rosinality(path)
        source = folder / "ms1mv3_arcface_r100_backbone.pth"
        if not source.is_file():
            arcface_iresnet_pth(source, depth=100)
        validation = folder / "swin_tiny_face_512.pth"
        if not validation.is_file():
            timm_pth("swin_tiny_patch4_window7_224", validation, seed=1, num_classes=512)
        return [
            "--set",
            f"generator.checkpoint={path}",
            "--set",
            f"encoders.source.weights={source}",
            "--set",
            f"encoders.validation.weights={validation}",
        ]
    if config in ("ckd/orl_full", "dcae/mnist_full", "dcae/cifar10_full"):
        return []  # trained from scratch: no weight file to stand in for
    raise KeyError(f"no random-weight recipe for {config!r}")


def stylegan2_rosinality(path: Path, *, size: int = 256, channel_multiplier: int = 2, seed: int = 0) -> Path:
    """A StyleGAN2 generator checkpoint in the rosinality/stylegan2-pytorch training layout.

    What that port's ``train.py`` saves and ALSUV's FFHQ-256 file is: the EMA generator's state
    dict under ``g_ema`` and the training ``args`` as an ``argparse.Namespace`` (no
    ``latent_avg``, so the loader's mean-latent fallback runs too). Defaults: FFHQ-256 config-f.
    The discriminator and optimiser states of a training file are left out: no loader reads them.
    """
    import argparse

    from raylab.methods.alsuv.model.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig(size=size, channel_multiplier=channel_multiplier))
    args = argparse.Namespace(
        size=size, latent=generator.style_dim, n_mlp=generator.config.n_mlp, channel_multiplier=channel_multiplier
    )
    torch.save({"g_ema": generator.state_dict(), "args": args}, path)
    return path
