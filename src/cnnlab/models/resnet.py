"""ResNet-18 for 32x32 inputs (He et al., 2016, as adapted for CIFAR): a 3x3 stride-1 stem and no
max-pool, so the first stage still sees 32x32; BasicBlocks [2, 2, 2, 2] of widths 64-512.

torchvision's resnet18 is the ImageNet variant: a 7x7 stride-2 stem and a max-pool shrink a 32x32
image to 8x8 before the first block, which throws away most of a CIFAR image (it trains to a
markedly lower accuracy on 32x32 inputs). That is why this one exists.
"""

from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; a 1x1 conv-BN shortcut when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """11,173,962 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)):
        super().__init__()
        layers = [
            nn.Sequential(
                nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
            )
        ]
        in_ch = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for k in range(count):
                layers.append(BasicBlock(in_ch, width, stride=2 if stage > 0 and k == 0 else 1))
                in_ch = width
        self.features = nn.Sequential(*layers)  # named like SmallCNN's, so inspect finds the stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)

    def stage_sequence(self) -> nn.Sequential:
        return self.features

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
