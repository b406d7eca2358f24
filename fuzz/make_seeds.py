"""Write the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*); run once, results are committed.

Seeds are small on purpose (the whole corpus stays well under 2 MB): a FAN of
the smallest legal shape (1 stack, width 32, hourglass depth 1, 2 landmarks)
for checkpoints, and a 16x16 -> 4x4 "landmark network" (one 1x1 conv and an
average pool) for artifacts, each with a valid contract so that the fuzzer
starts from files that load all the way through LandmarkSession. Hostile
seeds too: pickles whose payload would create the file ``fan_edge_payload_ran``
in the working directory, and truncated copies of the good files.

Needs the dev extra (torch, onnx, openvino, litert-torch). Usage:
``python fuzz/make_seeds.py [--out fuzz/corpus]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import SEED_INPUT_SIZE, seed_contract  # noqa: E402

from fan_edge.models import FAN, FANConfig, save_checkpoint  # noqa: E402

MARKER = "fan_edge_payload_ran"


class _Shell:
    """A pickle whose loading runs a shell command (creates MARKER)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _Eval:
    """A pickle whose loading runs Python code through eval (creates MARKER)."""

    def __reduce__(self):
        return (eval, (f"open({MARKER!r}, 'w')",))


class _Tiny(nn.Module):
    """The artifact seeds' network: (N, 3, 16, 16) -> (N, 4, 4, 4) "heatmaps"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the exported input name
        return self.pool(self.conv(input))


def _write(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def _tiny_fan() -> FAN:
    torch.manual_seed(0)
    return FAN(FANConfig(stacks=1, width=32, input_size=8, num_landmarks=2, hourglass_depth=1)).eval()


def checkpoint_seeds(folder: Path) -> None:
    model = _tiny_fan()
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        own = save_checkpoint(model.half(), Path(tmp) / "tiny.safetensors")
        model.float()
        data = own.read_bytes()
    _write(folder, "fan-edge.safetensors", data)
    _write(folder, "truncated.safetensors", data[: len(data) // 3])
    buf = io.BytesIO()
    torch.save(half, buf)
    _write(folder, "state-dict.pth", buf.getvalue())
    _write(folder, "truncated.pth", buf.getvalue()[: len(buf.getvalue()) // 10])
    small = {"conv1.weight": torch.zeros(2, 2), "m0.b1_1.conv1.weight": torch.ones(1), "l0.weight": torch.zeros(2, 1)}
    buf = io.BytesIO()
    torch.save({"state_dict": {"module." + k: v for k, v in small.items()}, "epoch": 3}, buf, _use_new_zipfile_serialization=False)
    _write(folder, "legacy-wrapped.pth", buf.getvalue())
    buf = io.BytesIO()
    torch.save(small, buf)
    _write(folder, "not-a-fan.pth", buf.getvalue())
    # Small legacy (non-zip) pickles: no zip CRCs in the way, so byte mutations reach the unpickler itself.
    state = {"model": small, "epoch": 1, "spec": {"epochs": 2}, "history": [{"loss": 0.5}]}
    for name, obj in (("legacy-small.pth", small), ("legacy-training-state.ckpt", state)):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
        _write(folder, name, buf.getvalue())
    for name, payload in (("shell", _Shell()), ("eval", _Eval())):
        _write(folder, f"payload-{name}.pkl", pickle.dumps({"conv1.weight": torch.zeros(1), "x": payload}))
        buf = io.BytesIO()
        torch.save({"state_dict": {"x": payload}}, buf)
        _write(folder, f"payload-{name}.pth", buf.getvalue())
    scripted = torch.jit.script(nn.Linear(2, 2))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    _write(folder, "torchscript.zip", buf.getvalue())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    _write(folder, "empty-dict.zip", zbuf.getvalue())


def _onnx_seed() -> bytes:
    import onnx

    from fan_edge.export.onnx_export import embed_contract

    buf = io.BytesIO()
    example = torch.zeros(1, 3, SEED_INPUT_SIZE, SEED_INPUT_SIZE)
    torch.onnx.export(_Tiny().eval(), (example,), buf, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["heatmaps"], dynamic_axes={"input": {0: "batch"}, "heatmaps": {0: "batch"}})
    proto = embed_contract(onnx.load_from_string(buf.getvalue()), seed_contract("onnx"))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _openvino_seed(onnx_bytes: bytes) -> tuple[bytes, bytes]:
    import openvino as ov

    from fan_edge.runtime.contract import RT_INFO_PATH

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.onnx"
        src.write_bytes(onnx_bytes)
        model = ov.convert_model(str(src))
        model.set_rt_info(seed_contract("openvino").to_json(), list(RT_INFO_PATH))
        ov.save_model(model, str(Path(tmp) / "m.xml"), compress_to_fp16=False)
        return (Path(tmp) / "m.xml").read_bytes(), (Path(tmp) / "m.bin").read_bytes()


def _tflite_seed() -> bytes:
    from fan_edge.export.tflite_export import embed_contract, torch_to_tflite

    class _NHWC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _Tiny()

        def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
            return {"heatmaps": self.net(input.permute(0, 3, 1, 2))}

    example = torch.zeros(1, SEED_INPUT_SIZE, SEED_INPUT_SIZE, 3)
    data = torch_to_tflite(_NHWC().eval(), example, "input", dynamic_batch=False)
    return embed_contract(data, seed_contract("tflite"))


def artifact_seeds(root: Path) -> None:
    onnx_bytes = _onnx_seed()
    _write(root / "artifact-onnx", "tiny.onnx", onnx_bytes)
    _write(root / "artifact-onnx", "truncated.onnx", onnx_bytes[: len(onnx_bytes) // 2])
    xml, binary = _openvino_seed(onnx_bytes)
    _write(root / "artifact-openvino-xml", "tiny.xml", xml)
    _write(root / "artifact-openvino-bin", "tiny.bin", binary)
    _write(root / "artifact-openvino-bin", "truncated.bin", binary[: len(binary) // 2])
    tflite = _tflite_seed()
    _write(root / "artifact-tflite", "tiny.tflite", tflite)
    _write(root / "artifact-tflite", "truncated.tflite", tflite[: len(tflite) // 2])
    _write(root / "artifact-tflite", "header.tflite", tflite[:8])
    contract = seed_contract("onnx")
    _write(root / "contract", "sidecar.json", contract.to_json(indent=2).encode())
    _write(root / "contract", "landmarks.json", contract.replace(outputs="landmarks", output_names=("landmarks", "scores")).to_json().encode())
    extra = json.loads(contract.to_json())
    extra.update(added_by_a_newer_exporter={"x": [1, 2.5, None, True]}, heatmap_stride=4.0)
    _write(root / "contract", "extra-fields.json", json.dumps(extra).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = parser.parse_args()
    for folder in args.out.glob("*"):
        for seed in folder.glob("seed-*"):
            seed.unlink()
    checkpoint_seeds(args.out / "checkpoint")
    artifact_seeds(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"seeds written under {args.out}: {total / 1024:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
