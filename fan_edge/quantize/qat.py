"""Quantization-aware training with NNCF (``fan-quantize --qat``).

``nncf.quantize`` inserts fake quantizers into the PyTorch FAN (weights
symmetric per channel, activations asymmetric per tensor, the MIXED preset of
the OpenVINO post-training path), initialised on the calibration faces with
the recipe of :mod:`fan_edge.export.int8` (per-face extremes averaged:
``MEAN_MINMAX`` on one face per sample); then ordinary fine-tuning trains the
weights and the quantizers' ranges together:

- loss: the heatmap loss on every stack against the ground truth, plus, with
  a teacher (by default the float model itself), the same loss against the
  teacher's heatmaps (``distill_weight`` balances the two, as in
  ``fan-distill``); the augmentation of ``fan-train``;
- BatchNorm statistics frozen (FAN's pre-activation BN folds into no
  convolution; its statistics must stay those the ranges were measured with);
  the quantizers' parameters get no weight decay;
- the loop is fan-train's (:func:`fan_edge.train.trainer.train`, with
  :class:`QATRecipe` as its hooks): ``--device`` and ``torchrun``, progress
  bar per epoch, one log line per epoch (``qat.log``; validation NME of the
  fake-quantized model), ``last.ckpt`` (with the quantizers' NNCF config)
  written atomically every few minutes and at every epoch: the same command
  resumes to the batch (data order and augmentation are functions of
  ``(seed, epoch, index)``); SIGINT/SIGTERM save and stop.

The run directory ends with ``final.safetensors`` (+ card ``final.json``):
the fine-tuned weights as an ordinary fan-edge checkpoint, which every tool
loads; and ``final.qat.safetensors`` beside it: the quantizers (NNCF's
config in the metadata, their parameters as tensors), which resume and
:func:`load_qat` (the fake-quantized model, for validation) read.
``fan-export --model OUT/final.safetensors --precision int8`` quantizes the
QAT weights with each target's post-training recipe: measured on AFW, that
beat exporting NNCF's trained quantizers (ONNX QDQ: as accurate, and slower
than the recipe's graph in ONNX Runtime; OpenVINO FakeQuantize: worse on
the QAT checkpoints since trained; figures: docs/quantization.md).

NNCF's CPU and CUDA kernels are C++ extensions compiled on first use
(slowly, and with a compiler: nvcc for the GPU);
:func:`use_eager_kernels` runs NNCF's own reference implementation of the
same functions in plain PyTorch instead, on either device.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CheckpointError, ConfigError, DataError, first_line
from ..export.int8 import matches
from ..models import FAN, create_model, read_checkpoint, save_checkpoint
from ..models.pretrained import config_and_weights
from ..train.distributed import Distributed
from ..train.spec import TrainSpec
from ..train.trainer import FINAL, LAST, Recipe, make_optimizer, train, validate

QAT_SUFFIX = ".qat.safetensors"
HOOKS_PREFIX = "__nncf_hooks."
CONFIG_KEY = "nncf_config"
# What a resume reads from LAST, with types (see read_training_state): the trainer's entries ("best" is newer than
# the first QAT checkpoints, which resume without it) and the quantizers' config and the figures before training.
RESUME_ENTRIES = {"model": dict, "nncf_config": str, "config": dict, "optimizer": dict, "epoch": int, "batch": int,
                  "history": list, "spec": dict, "spec.train": dict, "spec.train.epochs": int, "base_figures": dict,
                  "init_figures": dict}
log = logging.getLogger("fan_edge.train.qat")  # a child of the trainer's logger: its lines go to qat.log too


@dataclass
class QATSpec:
    """A QAT run: the fine-tuning (``train``: model, data, schedule, loss, augmentation, teacher) and the
    quantizers' initialisation (calibration faces, layers kept float)."""

    train: TrainSpec
    calib: str | None = None  # default: the first --data folder
    calib_faces: int = 128
    keep_float: list[str] = field(default_factory=list)  # module-name patterns kept float

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "calib": self.calib, "calib_faces": self.calib_faces, "keep_float": list(self.keep_float)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QATSpec":
        return cls(TrainSpec.from_dict(data["train"]), data.get("calib"), int(data.get("calib_faces", 128)), list(data.get("keep_float", [])))


# ---- NNCF plumbing ------------------------------------------------------------------------------------


def use_eager_kernels() -> None:
    """Run NNCF's fake quantization with its reference PyTorch functions (see the module docstring), on CPU
    and, where torch sees a GPU, on CUDA (whose extension would need nvcc).

    For each device only when NNCF has not loaded its extension yet; a no-op afterwards.
    """
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    reference = ReferenceQuantize(ReferenceBackendType.TORCH)

    class _Eager:  # the reference backward takes the CPU kernel's extra argument and works without it (CUDA's call)
        Quantize_forward = staticmethod(reference.forward)
        Quantize_backward = staticmethod(reference.backward)

    for name in ("QuantizedFunctionsCPU", "QuantizedFunctionsCUDA"):
        namespace = getattr(extensions, name, None)
        # CUDA without a GPU is NNCF's stub (any attribute raises): only the lazy namespaces are replaced.
        if type(namespace).__name__ == "ExtensionNamespace" and vars(namespace).get("_loaded_namespace") is None:
            namespace._loaded_namespace = _Eager


def ignored_scope(model: FAN, keep_float: list[str] | tuple[str, ...]):
    """An ``nncf.IgnoredScope`` of the convolutions whose module names match ``keep_float`` (None when empty)."""
    import nncf

    names = [f"{n.replace('.', '/')}/conv2d/0" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and matches(n, keep_float)]
    return nncf.IgnoredScope(names=names, validate=False) if names else None


def quantize_for_training(model: FAN, calibration, keep_float: list[str] | tuple[str, ...] = ()) -> FAN:
    """A copy of ``model`` with NNCF fake quantizers, initialised on ``calibration`` (a FaceCrops)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    use_eager_kernels()
    nncf.set_log_level(logging.ERROR)
    net = copy.deepcopy(model).eval()
    return nncf.quantize(
        net,
        calibration.nncf_dataset(torch_tensors=True),
        subset_size=len(calibration),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=ignored_scope(net, keep_float),
        advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_MINMAX),
    )


def _nncf_config(qmodel: nn.Module) -> dict[str, Any]:
    import nncf

    return nncf.torch.get_config(qmodel)


# What a QAT checkpoint may ask NNCF to rebuild: the two quantizer classes fan-quantize --qat writes, each with
# exactly the fields of NNCF's PTQuantizerSpec. NNCF itself would import any class under "nncf.*".
QUANTIZER_MODULE = "nncf.torch.quantization.layers"
QUANTIZER_CLASSES = ("SymmetricQuantizer", "AsymmetricQuantizer")
_QUANTIZER_FIELDS: dict[str, tuple[type, ...]] = {
    "num_bits": (int,), "mode": (str,), "signedness_to_force": (bool, type(None)), "narrow_range": (bool,),
    "half_range": (bool,), "scale_shape": (list,), "logarithm_scale": (bool,), "is_quantized_on_export": (bool,),
}
_COMMAND_FIELDS = {"hook_names_in_model", "module_path", "module_cls_name", "module_config"}
MAX_QUANTIZERS = 100_000
MAX_SCALE_VALUES = 1 << 16  # per quantizer: one per output channel at most


def check_nncf_config(config: Any, source: str) -> dict[str, Any]:
    """``config`` if it is an NNCF config of fan-edge's quantizers only, else a one-line CheckpointError.

    The config comes from a file (the ``.qat.safetensors`` metadata or a
    ``last.ckpt``): NNCF would import and construct whatever class under
    ``nncf.*`` it names and allocate scales of any shape it declares, so every
    command is checked against what fan-quantize --qat writes first.
    """
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{source}: not an NNCF quantizer config written by fan-quantize --qat ({why})")

    commands = config.get("compression_state") if isinstance(config, dict) else None
    if not isinstance(commands, list) or len(commands) > MAX_QUANTIZERS:
        raise bad("no list of compression_state commands")
    for command in commands:
        if not isinstance(command, dict) or set(command) != _COMMAND_FIELDS:
            raise bad("a command with other fields than NNCF's four")
        if command["module_path"] != QUANTIZER_MODULE or command["module_cls_name"] not in QUANTIZER_CLASSES:
            raise bad(f"it names {str(command['module_path'])[:80]}.{str(command['module_cls_name'])[:80]}, not a quantizer")
        hooks = command["hook_names_in_model"]
        if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) and len(h) < 1000 for h in hooks):
            raise bad("hook names are not a list of names")
        _check_quantizer_fields(command["module_config"], bad)
    return config


def _check_quantizer_fields(fields: Any, bad: Callable[[str], CheckpointError]) -> None:
    if not isinstance(fields, dict) or set(fields) != set(_QUANTIZER_FIELDS):
        raise bad("quantizer fields differ from NNCF's")
    for name, kinds in _QUANTIZER_FIELDS.items():
        value = fields[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise bad(f"quantizer field {name} is a {type(value).__name__}")
    if not 2 <= fields["num_bits"] <= 16 or fields["mode"] not in ("symmetric", "asymmetric"):
        raise bad("quantizer bits or mode out of range")
    shape = fields["scale_shape"]
    if not 1 <= len(shape) <= 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise bad("scale_shape is not a short list of positive sizes")
    if math.prod(shape) > MAX_SCALE_VALUES:
        raise bad(f"scale_shape {shape[:4]} holds more than {MAX_SCALE_VALUES} values")


def _rebuild(model: FAN, config: dict[str, Any], source: str = "QAT checkpoint") -> FAN:
    check_nncf_config(config, source)  # before NNCF is even imported
    import nncf

    use_eager_kernels()
    try:
        return nncf.torch.load_from_config(model, config, allowed_modules=(QUANTIZER_MODULE,))
    except Exception as exc:  # NNCF's own errors: a hook name the model does not have, a field it refuses
        raise CheckpointError(f"{source}: NNCF cannot rebuild its quantizers ({first_line(exc, 200, with_type=True)})") from None


def _json_config(text: Any, source: str) -> Any:
    if not isinstance(text, str) or len(text) > (64 << 20):
        raise CheckpointError(f"{source}: its NNCF config is not JSON text of a sane size")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{source}: its NNCF config is not valid JSON ({first_line(exc, 200, with_type=True)})") from None


def float_state(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in qmodel.state_dict().items() if not k.startswith(HOOKS_PREFIX)}


def float_copy(qmodel: FAN) -> FAN:
    """The fine-tuned weights in a plain FAN (no quantizers)."""
    net = FAN(qmodel.config, qmodel.weights)
    net.load_state_dict(float_state(qmodel))
    return net.eval()


def qat_path(checkpoint: str | Path) -> Path:
    """Where the quantizers of ``checkpoint`` (a ``.safetensors``) live."""
    p = Path(checkpoint)
    return p.with_name(p.name[: -len(".safetensors")] + QAT_SUFFIX if p.name.endswith(".safetensors") else p.name + QAT_SUFFIX)


def save_qat(qmodel: FAN, path: str | Path, card: dict[str, Any]) -> Path:
    """``path`` (the fine-tuned weights, an ordinary checkpoint + card) and its quantizers beside it.

    The quantizers are written first: a checkpoint never appears without them.
    """
    from safetensors.torch import save_file

    out = Path(path).with_suffix(".safetensors")
    hooks = {k: v.detach().contiguous().cpu() for k, v in qmodel.state_dict().items() if k.startswith(HOOKS_PREFIX)}
    with atomic_path(qat_path(out)) as tmp:
        save_file(hooks, str(tmp), metadata={CONFIG_KEY: json.dumps(_nncf_config(qmodel))})
    return save_checkpoint(float_copy(qmodel), out, card)


def load_qat(checkpoint: Any) -> FAN | None:
    """The fake-quantized FAN of a QAT checkpoint (its weights plus the quantizers beside it), or None when
    ``checkpoint`` is not a file with quantizers."""
    if not isinstance(checkpoint, (str, Path)):
        return None
    path = Path(checkpoint)
    quantizers = qat_path(path)
    if not (path.is_file() and quantizers.is_file()):
        return None
    from safetensors import safe_open

    from ..models.checkpoints import is_state_dict

    try:
        with safe_open(str(quantizers), "pt") as fh:
            meta = fh.metadata() or {}
            hooks = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors' own error types: truncated, corrupt, another format
        raise CheckpointError(f"{quantizers}: not a readable safetensors file ({first_line(exc, 200, with_type=True)})") from None
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{quantizers}: no NNCF config in its metadata (not written by fan-quantize --qat)")
    if not is_state_dict(hooks) or not all(k.startswith(HOOKS_PREFIX) for k in hooks):
        raise CheckpointError(f"{quantizers}: holds other tensors than NNCF quantizer parameters")
    qmodel = _rebuild(create_model(str(path)).eval(), _json_config(meta[CONFIG_KEY], str(quantizers)), str(quantizers))
    state = float_state(qmodel)
    state.update(hooks)
    try:
        qmodel.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{quantizers} does not match {path.name}: {str(exc).splitlines()[0][:200]}") from None
    return qmodel.eval()


# ---- fan-quantize --qat: a recipe of the trainer ------------------------------------------------------


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


class QATRecipe(Recipe):
    """fan-quantize --qat as a configuration of :func:`fan_edge.train.trainer.train`.

    The trainer runs the loop (device, ``torchrun``, resume, saving, stop
    rules, LR schedule, the loss of fan-train / fan-distill); this recipe
    wraps the float model in NNCF's fake quantizers once its weights are
    loaded, keeps BatchNorm frozen and the quantizers free of weight decay,
    saves the quantizers' config in ``last.ckpt`` (a killed run resumes with
    the same quantizers) and writes ``final.safetensors`` with its
    quantizers and card at the end (no ``best.safetensors``).
    """

    channels_last = False  # NNCF's fake quantizers were built and tested on the default layout
    log_file = "qat.log"
    progress_label = "qat epoch"
    resume_entries = RESUME_ENTRIES
    require_points = True

    def __init__(self, spec: QATSpec, command: str = "", log_fn: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.command = command
        self.log_fn = log_fn
        self.base_figures: dict[str, float] = {}
        self.init_figures: dict[str, float] = {}

    def resumed_spec(self, saved: dict[str, Any], given: TrainSpec, path: Path) -> TrainSpec:
        try:
            spec = QATSpec.from_dict(saved)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path}: its run spec is not one of fan-quantize --qat ({first_line(exc, 200, with_type=True)})") from None
        spec.train = super().resumed_spec(spec.train.to_dict(), given, path)
        self.spec = spec
        return spec.train

    def spec_dict(self, spec: TrainSpec) -> dict[str, Any]:
        return QATSpec(spec, self.spec.calib, self.spec.calib_faces, list(self.spec.keep_float)).to_dict()

    def prepare_model(self, spec: TrainSpec, state: dict[str, Any] | None, dist: Distributed, out: Path) -> FAN:
        """New: the float model, its quantizers initialised on the calibration faces (and, on rank 0 with --val,
        both validated on the device). Resumed: the saved architecture, its saved quantizers, the saved weights."""
        if state is not None:
            last = out / LAST
            model = _rebuild(FAN(*config_and_weights(state["config"])), _json_config(state["nncf_config"], str(last)), str(last))
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as exc:
                raise CheckpointError(f"{last}: its weights do not fit its quantized model ({first_line(exc, 200, with_type=True)})") from None
            self.base_figures, self.init_figures = state["base_figures"], state["init_figures"]
            return model
        from ..calibration import calibration_faces

        base = create_model(spec.model).eval()
        calib = calibration_faces(self.spec.calib or spec.data[0], base.config.input_size, base.weights.crop, self.spec.calib_faces,
                                  seed=spec.seed)
        log.info("initialising the quantizers on %d faces of %s", len(calib), calib.folder)
        model = quantize_for_training(base, calib, self.spec.keep_float)
        if spec.val and dist.is_main:
            self.base_figures = validate(base.to(dist.device), spec, dist.device)
            self.init_figures = validate(model.to(dist.device), spec, dist.device)
            log.info("validation: float %s | int8 (fake-quant) after initialisation %s",
                     json.dumps(self.base_figures), json.dumps(self.init_figures))
        return model

    def make_optimizer(self, spec: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
        weights = [p for n, p in model.named_parameters() if not n.startswith(HOOKS_PREFIX) and p.requires_grad]
        ranges = [p for n, p in model.named_parameters() if n.startswith(HOOKS_PREFIX) and p.requires_grad]
        optimizer = make_optimizer(spec, weights)
        if ranges:
            optimizer.add_param_group({"params": ranges, "weight_decay": 0.0})
        return optimizer

    def train_mode(self, net: nn.Module) -> None:
        net.train()
        _freeze_bn(net)

    def extra_state(self, model: FAN) -> dict[str, Any]:
        return {"nncf_config": json.dumps(_nncf_config(model)), "base_figures": self.base_figures, "init_figures": self.init_figures}

    def keep_best(self, *args: Any, **kwargs: Any) -> None:
        """No best.safetensors: a QAT run's one artifact is its final model and quantizers."""

    def finish(self, model: FAN, spec: TrainSpec, history: list[dict[str, Any]], best: dict[str, Any],
               dataset: Any, out: Path) -> dict[str, Any]:
        model.eval()
        final = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("epoch", "loss", "seconds")}
        card = _card(self.spec, model, self.command, self.base_figures, self.init_figures, final, history)
        path = save_qat(model, out / FINAL, card)
        log.info("done: %s (quantizers %s); validation int8 (fake-quant) %s, float before QAT %s",
                 path, qat_path(path).name, json.dumps(final), json.dumps(self.base_figures))
        if self.log_fn:
            self.log_fn(f"export: fan-export --model {path} --target onnx,openvino,tflite --precision int8 "
                        f"--calib {self.spec.calib or spec.data[0]}")
        return {"final": str(path), "figures": final, "base_figures": self.base_figures}


def train_qat(spec: QATSpec, resume: bool = True, command: str = "", log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a QAT run into ``spec.train.out`` on ``spec.train.device`` (under ``torchrun`` too);
    returns a summary (figures, paths)."""
    if not spec.train.data:
        raise DataError("no training data: give at least one --data folder")
    if spec.train.autocast is not None:  # the fake quantizers simulate int8 from fp32 activations
        raise ConfigError("QAT runs in fp32: leave out --autocast")
    return train(spec.train, resume=resume, recipe=QATRecipe(spec, command, log_fn))


def _card(spec: QATSpec, model: FAN, command: str, base: dict, init: dict, final: dict, history: list) -> dict[str, Any]:
    from ..models.complexity import count_macs, count_parameters

    ts = spec.train
    try:
        base_card = read_checkpoint(ts.model).card if Path(ts.model).is_file() else {}
    except CheckpointError:
        base_card = {}
    return {
        "description": f"quantization-aware trained (NNCF) from {ts.model}",
        "recipe": command,
        "parameters": count_parameters(float_copy(model)),
        "macs": count_macs(float_copy(model), model.config.input_size),
        "figures": final,
        "data": {"train": ts.data, "validation": ts.val, "boxes": "ground-truth landmark boxes"},
        "qat": {
            "base": ts.model,
            "base_description": base_card.get("description", ""),
            "quantizers": qat_path(FINAL).name,
            "spec": spec.to_dict(),
            "validation_float_before": base,
            "validation_int8_after_init": init,
            "validation_int8_final": final,
            "history": history,
            "note": "figures are of the fake-quantized PyTorch model; fan-export --precision int8 measures each artifact",
        },
    }


__all__ = [
    "QATSpec", "load_qat", "qat_path", "quantize_for_training", "save_qat", "train_qat", "use_eager_kernels",
]
