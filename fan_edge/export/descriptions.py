"""What an artifact says about itself in each format's standard fields (TFLite metadata, Core ML spec, ONNX).

One source for every target, taken from the contract, so that Android
Studio's model binding, Xcode's model view and Netron describe the same
input and outputs as fan-edge's own runtime reads from the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from ..runtime.contract import OUTPUT_ROLES, ModelContract

AUTHOR = "fan-edge (FAN: Bulat & Tzimiropoulos, ICCV 2017)"
# The code is BSD; the weights learned from research-only face data, and say so wherever a model's licence is shown.
LICENSE = ("Code: BSD-3-Clause (fan-edge). Weights: trained on 300-W (and, where the model card says so, "
           "teacher-labelled LFW), research and non-commercial use only; see the model card.")
CONTRACT_FILE = "fan_edge_contract.json"


@dataclass(frozen=True)
class ArtifactDescription:
    name: str
    description: str
    version: str
    author: str
    license: str
    input: str
    outputs: dict[str, str]  # by role


def describe(contract: ModelContract) -> ArtifactDescription:
    """The human-readable description of an artifact with this contract."""
    s, k = contract.input_size, contract.num_landmarks
    lo, hi = contract.value_range
    name = contract.model or "fan"
    crop = contract.crop
    description = (
        f"{k} facial landmarks (300-W markup) from a FAN stacked-hourglass network, {contract.precision}. "
        f"Input: the square crop around a face box that fan-edge's runtime cuts (side = box size x "
        f"{crop.reference_scale / crop.window:g}, centre shifted {crop.center_shift:g} box heights down), "
        f"resized to {s}x{s}. The full preprocessing contract is the associated file {CONTRACT_FILE}."
    )
    image = (f"RGB face crop, {s}x{s}, {contract.layout}, float values in [{lo:g}, {hi:g}] "
             f"(pixel / 255); see {CONTRACT_FILE} for the crop")
    outputs = {
        "heatmaps": (f"{k} heatmaps of {contract.heatmap_size}x{contract.heatmap_size} cells, one per landmark "
                     f"(one cell = {contract.heatmap_stride:g} crop pixels): a landmark is at its map's peak, "
                     f"refined as the contract's 'refine' says"),
        "landmarks": (f"{k} landmarks as (x, y) in crop pixels (0-based pixel centres of the {s}x{s} input); "
                      "map them back to the photo with the inverse of the crop"),
        "scores": f"{k} confidences, each landmark's heatmap peak value (higher is surer)",
    }
    return ArtifactDescription(
        name=f"fan-edge {name}",
        description=description,
        version=f"{__version__}+{name}.{contract.precision}",
        author=AUTHOR,
        license=LICENSE,
        input=image,
        outputs={role: outputs[role] for role in OUTPUT_ROLES[contract.outputs]},
    )


def numeric_version(version: str = __version__) -> int:
    """fan-edge's version as one integer (0.1.0 -> 100, 1.2.3 -> 10203): ONNX's ``model_version`` is an int64."""
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]
