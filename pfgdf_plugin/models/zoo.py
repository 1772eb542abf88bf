"""Small networks timm does not have: CIFAR-style VGG and ResNet (32x32 inputs), and the comparison's CNN.

Each records its constructor arguments in ``config``, so that a saved pruned copy can be rebuilt by name
(``ZOO``) without unpickling anything.
"""

from __future__ import annotations

import torch
import torch.nn as nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (the network of PFGDF's VGG-16 / CIFAR-10 experiment).

    Examples:
        >>> CifarVGG()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, cfg: tuple = VGG16_CFG, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.config = {"cfg": list(cfg), "num_classes": num_classes, "in_chans": in_chans}
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def get_classifier(self) -> nn.Module:
        return self.classifier


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (ResNet-56: ``depth=56``), as in CHIP's CIFAR experiments.

    Examples:
        >>> CifarResNet(depth=20)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.config = {"depth": depth, "num_classes": num_classes, "in_chans": in_chans}
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(c, width, 2 if stage > 0 and i == 0 else 1))
                c = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))

    def get_classifier(self) -> nn.Module:
        return self.fc


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU blocks (two max-pools), global average pooling, one linear classifier.

    The network of the criteria comparison (`pfgdf_plugin.studies.compare`); any input size of 4x4 or more.

    Examples:
        >>> SmallCNN(1, 10, width=8)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, w), *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
            *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ZOO: dict[str, type[nn.Module]] = {"CifarVGG": CifarVGG, "CifarResNet": CifarResNet, "SmallCNN": SmallCNN}
"""The zoo's networks by class name (as saved model files record them)."""
