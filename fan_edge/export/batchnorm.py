"""BatchNorm as a 1x1 depthwise convolution, for converters that would spell it out op by op.

FAN's BatchNorms are pre-activation (``conv(relu(bn(x)))``, and the raw conv
output also feeds the block's concat), so none of them folds into a
convolution. litert-torch lowers each one to SUB, MUL, MUL, ADD: four
elementwise ops, each quantized on its own in int8, for every BatchNorm of
the network. A per-channel affine map is exactly a 1x1 depthwise
convolution with bias, which TFLite runs as one DEPTHWISE_CONV_2D with the
following ReLU fused in, and the int8 weight of each channel is its own
per-channel scale (exact). Op counts and latencies: docs/export.md,
"BatchNorm as one op".
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def depthwise_from_batchnorm(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The eval-mode ``bn`` as ``Conv2d(C, C, 1, groups=C)``: weight ``gamma / sqrt(var + eps)``, bias ``beta - mean * weight``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics has no eval-mode affine map")
    channels = bn.num_features
    gamma = bn.weight if bn.weight is not None else torch.ones(channels)
    beta = bn.bias if bn.bias is not None else torch.zeros(channels)
    with torch.no_grad():
        scale = gamma / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(channels, channels, kernel_size=1, groups=channels, bias=True)
        conv.weight.copy_(scale.reshape(channels, 1, 1, 1))
        conv.bias.copy_(beta - bn.running_mean * scale)
    return conv.to(device=scale.device, dtype=scale.dtype)


def batchnorms_as_depthwise(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every BatchNorm2d replaced in place (same attribute names, so layer
    names and scopes are unchanged); ``module`` itself is left as it was."""
    converted = copy.deepcopy(module).eval()
    for parent in list(converted.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, depthwise_from_batchnorm(child))
    return converted
