"""The chapter's SmallCNN: three stages of conv-BN-ReLU blocks, global pooling, a linear head."""

from torch import nn


def conv_block(in_ch: int, out_ch: int, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    """Mix, normalize, activate. Without batch norm the convolution keeps its bias (the shift BN supplied)."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """3x32x32 -> 32x16x16 -> 64x8x8 -> 128x4x4 -> pool -> linear: 288,746 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, batch_norm: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(3, 32, batch_norm=batch_norm),
            conv_block(32, 32, stride=2, batch_norm=batch_norm),
            conv_block(32, 64, batch_norm=batch_norm),
            conv_block(64, 64, stride=2, batch_norm=batch_norm),
            conv_block(64, 128, batch_norm=batch_norm),
            conv_block(128, 128, stride=2, batch_norm=batch_norm),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def stage_sequence(self) -> nn.Sequential:
        return self.features

    def forward(self, x):
        x = self.features(x)
        return self.classifier(self.pool(x).flatten(1))
