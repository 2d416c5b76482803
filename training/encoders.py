"""Encoders f and g for image-shaped inputs (C, H, W): central frames (3 channels, uint8) and
log-Mel spectrograms (1 channel), paper §3.4.

- `small_cnn`: four convolution blocks and a global average pool, for CPU machines.
- `resnet34`, `resnet50`, `vgg16`: torchvision's backbones with their classifier removed
  (512, 2048 and 4096 features: ResNets after global pooling, VGG-16 after fc7), trained end
  to end (Table 1) or used frozen to extract features (Table 2, extract.py). A spectrogram is
  fed as a 3-channel image by repeating its one channel, as the paper does ("similar to the
  RGB image").

Inputs stay in their stored form (uint8 frames, float16 spectrograms) until they reach the
encoder, which moves each batch to its device and standardises it there, so a dataset of
images never has to fit on the GPU as float32. Standardisation is per channel with the
training set's statistics, except for 3-channel inputs to ImageNet-pretrained weights,
which get ImageNet's mean and std (what those weights expect).

Pretrained weights are read from the torch hub cache only (`$TORCH_HOME/hub/checkpoints`,
where torchvision keeps them); when they are not there the error says which file to put
where. Nothing is ever downloaded, so a machine without internet fails at once, not after a
long timeout.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch._dynamo
from torch import nn

from .spec import BACKBONES, IMAGE_ENCODERS  # noqa: F401  (listed once, in the module without torch)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of pixel values in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_CNN_WIDTH = 128
# Rows per forward pass when an image encoder runs over a whole split (evaluation, statistics).
IMAGE_EVAL_CHUNK = 256


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are not on this host."""


def pretrained_weights_path(name: str) -> tuple[Path, str]:
    """Where torchvision caches the default ImageNet weights of `name`, and their URL."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path), weights.url


def load_pretrained(model: nn.Module, name: str) -> None:
    path, url = pretrained_weights_path(name)
    if not path.is_file():
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {name} are not on this host: expected {path}. Download {url} where there is "
            f"internet and copy it there (or set TORCH_HOME), or train with pretrained off.")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def backbone(name: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """A torchvision backbone without its classifier, and its feature size."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        load_pretrained(model, name)
    if name.startswith("resnet"):
        size = model.fc.in_features
        model.fc = nn.Identity()
        return model, size
    if name == "vgg16":
        model.classifier = model.classifier[:-1]  # up to fc7 and its ReLU/dropout
        return model, 4096
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


class SmallCNN(nn.Sequential):
    """Four 3×3 conv–BatchNorm–ReLU blocks (the first with stride 2, then 2×2 max pooling),
    32→64→128→128 channels, global average pooling: ~0.04 GFLOPs for a 112² frame."""

    def __init__(self, in_channels: int):
        def block(cin, cout, stride=1, pool=True):
            layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                      nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        super().__init__(*block(in_channels, 32, stride=2), *block(32, 64), *block(64, 128),
                         *block(128, SMALL_CNN_WIDTH, pool=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Standardise(nn.Module):
    """(x − mean) / std per channel, after moving x to this module's device as float32, in
    `memory_format` (channels-last when the model is: training/speed.py)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(-1, 1, 1).float())
        self.register_buffer("std", std.reshape(-1, 1, 1).float())
        self.memory_format = torch.preserve_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Laid out before the conversion to float32: a quarter of the bytes to move for uint8 frames.
        x = x.to(self.mean.device, non_blocking=True, memory_format=self.memory_format).float()
        return (x - self.mean) / self.std


class RepeatChannels(nn.Module):
    """A one-channel input (a spectrogram) as the three channels an ImageNet backbone takes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def input_standardiser(channels: int, mean: torch.Tensor, std: torch.Tensor, pretrained: bool) -> Standardise:
    if pretrained and channels == 3:
        return Standardise(torch.tensor(IMAGENET_MEAN) * 255.0, torch.tensor(IMAGENET_STD) * 255.0)
    return Standardise(mean, std)


def image_trunk(kind: str, channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    """The part of the encoder between standardisation and the k-feature projection."""
    if kind == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights")
        return SmallCNN(channels), SMALL_CNN_WIDTH
    if channels not in (1, 3):
        raise ValueError(f"{kind} takes 1- or 3-channel images, got {channels} channels")
    model, size = backbone(kind, pretrained)
    return nn.Sequential(RepeatChannels(), model), size


class ImageEncoder(nn.Module):
    """standardise → trunk (small CNN or backbone) → linear map to the k features of f or g."""

    eval_chunk = IMAGE_EVAL_CHUNK

    def __init__(self, kind: str, input_shape: tuple[int, ...], feature_dim: int, mean: torch.Tensor,
                 std: torch.Tensor, pretrained: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"encoder {kind!r} takes (channels, height, width) inputs, got shape {input_shape}")
        channels = input_shape[0]
        self.standardise = input_standardiser(channels, mean, std, pretrained)
        self.trunk, size = image_trunk(kind, channels, pretrained)
        self.project = nn.Linear(size, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardise(x)
        # Each part of a batch and each evaluation chunk has a size of its own: a compiled trunk
        # (training/speed.py) takes the batch size as dynamic instead of compiling once per size.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.project(self.trunk(x))
