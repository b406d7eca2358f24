"""FAN's int8 recipe, shared by the ONNX Runtime and NNCF quantizers.

Measured on a fan2-w64-i128 (afw, 64 faces; see docs/export.md):

- The residual stream (block outputs ``x + out``, the BatchNorm inputs) has a
  wide per-tensor range with a few large values; quantizing it (ONNX Runtime's
  default QDQ quantizes Add and BatchNormalization too) wrecked the heatmaps
  (ΔNME +54 pp). Only convolutions are quantized (weights per channel, inputs
  after BN-ReLU, which are well conditioned); Add, Concat, pooling, upsampling
  and BN stay float.
- Each stack's head convolutions stay float: ``conv_last{i}`` reads the
  un-normalised features (a range of about 900 against 15 elsewhere),
  ``l{i}`` writes the heatmaps (whose peak is all the signal), and the
  stack links ``bl{i}``/``al{i}`` feed the next stack. They are 1x1
  convolutions: a few percent of the MACs.
"""

from __future__ import annotations

import re

# Conv weights (by the PyTorch parameter name, which both ONNX and OpenVINO keep) whose conv stays float.
FLOAT_CONV_WEIGHTS = re.compile(r"^(conv_last|l|bl|al)\d+\.weight$")


def is_float_conv_weight(name: str) -> bool:
    return bool(FLOAT_CONV_WEIGHTS.match(name))
