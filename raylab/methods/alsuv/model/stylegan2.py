"""StyleGAN2 (Karras et al., CVPR 2020): generator and discriminator as plain torch modules.

ALSUV searches the latent space of a StyleGAN2 generator, so the generator must expose its
parts: the mapping network ``z -> w`` (pixel norm + ``n_mlp`` equalised-lr linear layers
with leaky ReLU, learning-rate multiplier 0.01), the extended latent space W+ (one ``w`` per
synthesis layer, ``n_latent = 2 log2(size) - 2`` of them), truncation towards the mean
latent, and the synthesis network (a learnt 4x4 constant, modulated / demodulated 3x3
convolutions with per-layer noise inputs and a fused bias + leaky ReLU, upsampling by a
transposed convolution followed by a [1, 3, 3, 1] blur, and skip-connected ToRGB layers).

**Checkpoint layout.** Parameter and buffer names follow the widely used PyTorch port
(rosinality/stylegan2-pytorch), so its checkpoints (``stylegan2-ffhq-config-f.pt`` and the
256 px FFHQ model ALSUV uses) load with ``strict=True`` through :func:`load_rosinality`.
A checkpoint is a ``torch.save`` dict holding the generator's state dict under ``g_ema``
(preferred; ``g`` is used when there is no EMA copy, and a bare state dict is accepted) and
optionally ``latent_avg`` (the mean ``w``). The generator state dict's keys are:

* ``style.{1..n_mlp}.weight`` ``(style_dim, style_dim)``, ``style.{i}.bias`` (``style.0`` is
  the parameter-free pixel norm);
* ``input.input`` ``(1, C4, 4, 4)``;
* ``conv1.conv.weight`` ``(1, C4, C4, 3, 3)``, ``conv1.conv.modulation.{weight,bias}``,
  ``conv1.noise.weight`` ``(1,)``, ``conv1.activate.bias`` ``(C4,)``;
* ``to_rgb1.conv.weight`` ``(1, 3, C4, 1, 1)``, ``to_rgb1.conv.modulation.*``, ``to_rgb1.bias``
  ``(1, 3, 1, 1)``;
* for each resolution ``r = 8 .. size`` (index ``j`` from 0): ``convs.{2j}`` (upsampling,
  with the buffer ``convs.{2j}.conv.blur.kernel``) and ``convs.{2j+1}`` as ``conv1``;
  ``to_rgbs.{j}`` as ``to_rgb1`` plus the buffer ``to_rgbs.{j}.upsample.kernel``;
* ``noises.noise_{i}`` ``(1, 1, r_i, r_i)``: the fixed noise inputs (``noise_mode="const"``).

Channel widths are ``min(channel_max, channel_base * channel_multiplier // resolution)``:
with the defaults (16384, 2, 512) that is exactly the port's table for config-f
(512 up to 64 px, then 256, 128, ...). Small CPU models lower ``channel_max``.

The modulated convolution is computed in its non-fused form (scale the input by the style,
convolve with the shared weight, multiply by the demodulation coefficients), which is
algebraically identical to the grouped-convolution form and faster on CPUs with batches.
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raylab.methods.alsuv.config import GeneratorConfig  # defined there: typed configs import it without torch

_DEFAULT_CONFIG = GeneratorConfig()  # Generator's default (frozen, so one shared instance is safe)

NoiseMode = Literal["const", "random", "none"]
BLUR_KERNEL = (1, 3, 3, 1)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


# ------------------------------------------------------------------------ primitives


def make_kernel(values: tuple[int, ...] = BLUR_KERNEL) -> Tensor:
    """Separable FIR kernel (outer product), normalised to sum to one."""
    k = torch.tensor(values, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve with the (flipped) FIR kernel, downsample.

    Pure-torch equivalent of the CUDA op of the StyleGAN2 code bases for non-negative pads;
    the same ``pad`` is used for both axes.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    pad0, pad1 = pad
    if pad0 or pad1:
        x = F.pad(x, (pad0, pad1, pad0, pad1))
    weight = torch.flip(kernel, (0, 1)).to(x)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: Tensor, bias: Tensor, slope: float = LRELU_SLOPE, gain: float = LRELU_GAIN) -> Tensor:
    """``leaky_relu(x + bias) * sqrt(2)``: the bias-and-activation of every StyleGAN2 layer."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * gain


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate (weights ~ N(0, 1), scaled at run time)."""

    def __init__(
        self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel() * (upsample_factor**2))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel() * (factor**2))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2x upsampling (Eq. 1-3)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(BLUR_KERNEL) - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        batch = x.shape[0]
        weight = self.scale * self.weight[0]  # (out, in, k, k)
        styles = self.modulation(style)  # (batch, in)
        x = x * styles[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, k, k) of (w * s)^2 per (sample, out channel)
            demod = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).t() + 1e-8)
            out = out * demod.view(batch, self.out_channels, 1, 1)
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# -------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> w), ``synthesis`` (W+ -> image in about [-1, 1])."""

    def __init__(self, config: GeneratorConfig = _DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        c = config
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(c.style_dim, c.style_dim, lr_mul=c.lr_mlp, activate=True) for _ in range(c.n_mlp)],
        )
        self.input = ConstantInput(c.channels(4))
        self.conv1 = StyledConv(c.channels(4), c.channels(4), c.style_dim)
        self.to_rgb1 = ToRGB(c.channels(4), c.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept for the checkpoint layout
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(c.num_layers):
            resolution = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, resolution, resolution))
        in_channels = c.channels(4)
        for i in range(3, c.log_size + 1):
            out_channels = c.channels(2**i)
            self.convs.append(StyledConv(in_channels, out_channels, c.style_dim, upsample=True))
            self.convs.append(StyledConv(out_channels, out_channels, c.style_dim))
            self.to_rgbs.append(ToRGB(out_channels, c.style_dim))
            in_channels = out_channels

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    def mapping(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z must have shape (n, {self.style_dim}), got {tuple(z.shape)}")
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 10_000, *, seed: int = 0, chunk: int = 2048) -> Tensor:
        """Mean ``w`` of ``n`` mapped ``z ~ N(0, I)`` (seeded), shape ``(1, style_dim)``."""
        device = self.input.input.device
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros(1, self.style_dim, dtype=torch.float64)
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), self.style_dim, generator=generator).to(device)
            total += self.mapping(z).double().sum(0, keepdim=True).cpu()
        return (total / n).float().to(device)

    def broadcast(self, w: Tensor) -> Tensor:
        """``(n, style_dim)`` -> W+ ``(n, n_latent, style_dim)``: the same ``w`` for every layer."""
        return w.unsqueeze(1).expand(-1, self.n_latent, -1)

    @staticmethod
    def truncate(latent: Tensor, psi: float, mean: Tensor | None) -> Tensor:
        """``mean + psi * (latent - mean)`` (W or W+; ``mean`` broadcasts); identity at ``psi = 1``."""
        if psi == 1.0:
            return latent
        if mean is None:
            raise ValueError(f"truncation psi={psi} needs the mean latent")
        if mean.ndim == 2 and latent.ndim == 3:
            mean = mean.unsqueeze(1)
        return mean + psi * (latent - mean)

    def _noise(self, mode: NoiseMode, batch: int, device: torch.device) -> list[Tensor | None]:
        if mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_layers)]
        if mode == "random":
            return [
                torch.randn(batch, 1, *getattr(self.noises, f"noise_{i}").shape[2:], device=device)
                for i in range(self.config.num_layers)
            ]
        if mode == "none":
            return [None] * self.config.num_layers
        raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {mode!r}")

    def synthesis(self, latent: Tensor, noise_mode: NoiseMode = "const") -> Tensor:
        """W+ latent ``(n, n_latent, style_dim)`` (or W ``(n, style_dim)``) -> images ``(n, 3, size, size)``."""
        if latent.ndim == 2:
            latent = self.broadcast(latent)
        if latent.ndim != 3 or latent.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(
                f"W+ latent must have shape (n, {self.n_latent}, {self.style_dim}), got {tuple(latent.shape)}"
            )
        batch = latent.shape[0]
        noise = self._noise(noise_mode, batch, latent.device)
        out = self.conv1(self.input(batch), latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for up_conv, conv, noise1, noise2, to_rgb in zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs, strict=True
        ):
            out = up_conv(out, latent[:, i], noise1)
            out = conv(out, latent[:, i + 1], noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip

    def forward(
        self,
        z: Tensor,
        *,
        mix_z: Tensor | None = None,
        mix_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        noise_mode: NoiseMode = "random",
        return_latents: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images from ``z`` (training path), with optional style mixing at ``mix_index``."""
        w = self.truncate(self.mapping(z), truncation, truncation_latent)
        latent = self.broadcast(w)
        if mix_z is not None:
            w2 = self.truncate(self.mapping(mix_z), truncation, truncation_latent)
            index = mix_index if mix_index is not None else random.randint(1, self.n_latent - 1)
            latent = torch.cat([latent[:, :index], self.broadcast(w2)[:, index:]], dim=1)
        image = self.synthesis(latent, noise_mode)
        return (image, latent) if return_latents else image


# ---------------------------------------------------------------------- discriminator


class ConvLayer(nn.Sequential):
    """(blur ->) equalised conv (stride 2 when downsampling) (-> fused leaky ReLU)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        downsample: bool = False,
        bias: bool = True,
        activate: bool = True,
    ):
        layers: list[nn.Module] = []
        stride, padding = 1, kernel_size // 2
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with the minibatch standard-deviation layer."""

    def __init__(self, config: GeneratorConfig, stddev_group: int = 4) -> None:
        super().__init__()
        c = config
        layers: list[nn.Module] = [ConvLayer(3, c.channels(c.size), 1)]
        in_channels = c.channels(c.size)
        for i in range(c.log_size, 2, -1):
            out_channels = c.channels(2 ** (i - 1))
            layers.append(ResBlock(in_channels, out_channels))
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        self.stddev_group = stddev_group
        self.final_conv = ConvLayer(in_channels + 1, c.channels(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(c.channels(4) * 16, c.channels(4), activate=True), EqualLinear(c.channels(4), 1)
        )

    def forward(self, images: Tensor) -> Tensor:
        out = self.convs(images)
        batch, channels, height, width = out.shape
        group = min(batch, self.stddev_group)
        while batch % group:
            group -= 1
        stddev = out.view(group, -1, 1, channels, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.flatten(1))


# ------------------------------------------------------------------------ checkpoints


def generator_state(
    checkpoint: Mapping[str, Any], *, source: str = "checkpoint"
) -> tuple[dict[str, Tensor], Tensor | None]:
    """``(generator state dict, latent_avg or None)`` from a rosinality-layout checkpoint dict."""
    if "g_ema" in checkpoint:
        state = checkpoint["g_ema"]
    elif "g" in checkpoint:
        state = checkpoint["g"]
    elif "style.1.weight" in checkpoint or "module.style.1.weight" in checkpoint:
        state = checkpoint
    else:
        raise KeyError(
            f"{source}: no generator weights; expected a 'g_ema' (or 'g') state dict, or a bare state dict "
            f"with 'style.1.weight'; found keys {sorted(checkpoint)[:8]}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    latent_avg = checkpoint.get("latent_avg") if "g_ema" in checkpoint or "g" in checkpoint else None
    return state, latent_avg


def infer_config(state: Mapping[str, Tensor], *, source: str = "checkpoint") -> GeneratorConfig:
    """The :class:`GeneratorConfig` whose modules have the shapes of ``state``."""
    try:
        style_dim = state["style.1.weight"].shape[1]
        n_mlp = len({k.split(".")[1] for k in state if k.startswith("style.") and k.endswith(".weight")})
        n_rgbs = len({k.split(".")[1] for k in state if k.startswith("to_rgbs.")})
        channel_max = state["input.input"].shape[1]
    except KeyError as error:
        raise KeyError(f"{source}: not a StyleGAN2 generator state dict (missing {error})") from None
    size = 2 ** (n_rgbs + 2)
    widths = {2 ** (3 + j): state[f"convs.{2 * j}.conv.weight"].shape[1] for j in range(n_rgbs)}
    widths[4] = channel_max
    # Fit channel_base * multiplier from the first resolution where the width drops below the cap.
    product = next((w * r for r, w in sorted(widths.items()) if w < channel_max), channel_max * size)
    config = GeneratorConfig(
        size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=1, channel_base=product, channel_max=channel_max
    )
    mismatch = {r: (w, config.channels(r)) for r, w in widths.items() if config.channels(r) != w}
    if mismatch:
        raise ValueError(f"{source}: channel widths {widths} follow no min(max, base // resolution) rule ({mismatch})")
    return config


def load_checkpoint_file(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with only tensors, containers and the ``argparse.Namespace`` training args.

    ``mmap``: map the tensors instead of reading them (for a look at the shapes of a large
    file); a legacy-format file that cannot be mapped is read as usual.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint {path} does not exist")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    return dict(checkpoint)


def checkpoint_config(path: str | Path) -> GeneratorConfig:
    """The architecture of a rosinality-layout file, from its tensor shapes (mapped, not read)."""
    state, _ = generator_state(load_checkpoint_file(path, mmap=True), source=str(path))
    return infer_config(state, source=str(path))


def load_rosinality(path: str | Path, config: GeneratorConfig | None = None) -> tuple[Generator, Tensor | None]:
    """A generator (eval mode) and its ``latent_avg`` (or ``None``) from a rosinality-layout file.

    ``config=None`` infers the architecture from the weight shapes; loading is strict, so a
    file with missing, extra or mis-shaped tensors is an error naming the file.
    """
    state, latent_avg = generator_state(load_checkpoint_file(path), source=str(path))
    config = config or infer_config(state, source=str(path))
    generator = Generator(config)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the generator weights do not match {config}: {error}") from None
    if latent_avg is not None:
        latent_avg = torch.as_tensor(latent_avg, dtype=torch.float32).reshape(1, -1)
    return generator.eval(), latent_avg


def save_rosinality(
    path: str | Path, generator: Generator, *, latent_avg: Tensor | None = None, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{"g_ema": state, "latent_avg": ...}`` in the layout :func:`load_rosinality` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"g_ema": generator.state_dict()}
    if latent_avg is not None:
        payload["latent_avg"] = latent_avg.detach().cpu().reshape(-1)
    payload.update(extra or {})
    staging = path.with_name(f".{path.name}.tmp")
    torch.save(payload, staging)
    staging.replace(path)
    return path
