"""Fine heads (``head_stride=2``): heatmaps at half the input, from the config through training, files and every export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fan_edge.errors import ConfigError
from fan_edge.export.int8 import Int8Recipe
from fan_edge.models import FANConfig, Weights, create_model, save_checkpoint
from fan_edge.models.complexity import config_macs, config_parameters, count_macs, count_parameters
from fan_edge.models.checkpoints import infer_config
from fan_edge.runtime.crop import CropSpec
from fan_edge.runtime.decode import decode_heatmaps
from conftest import randomise_batchnorm

FINE = FANConfig(stacks=2, width=32, input_size=128, head_stride=2)


def _randomise_fine_heads(model):
    """A built fine head's correction starts at zero; give it weights so that the fine path is what is tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("fine") and name.split(".")[1] == "out":
                p.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module")
def fine_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    weights = Weights(crop=CropSpec(reference_scale=200.0, center_shift=0.1), refine="gaussian")
    model = _randomise_fine_heads(randomise_batchnorm(create_model(FINE, weights=weights)))
    return save_checkpoint(model, tmp_path_factory.mktemp("fine") / "fine.safetensors", card={"description": "test"})


def test_config_takes_two_or_four_and_serialises_only_the_new_value():
    assert FINE.heatmap_size == 64 and FINE.fine
    assert "head_stride" not in FANConfig(stacks=1, width=32, input_size=128).to_dict()  # older readers see no change
    assert FANConfig.from_dict(FINE.to_dict()) == FINE
    for bad in (1, 3, 8, True):
        with pytest.raises(ConfigError, match="head_stride"):
            FANConfig(head_stride=bad)
    with pytest.raises(ConfigError, match="channel-pruned"):
        FANConfig(stacks=1, width=32, input_size=128, head_stride=2, channels={"conv_last0": 16})


def test_shapes_in_training_and_eval_and_the_early_exit():
    model = create_model(FINE, weights=False)
    x = torch.rand(2, 3, 128, 128)
    model.train()
    # Every stack supervised: the last on the fine grid, earlier ones on FAN's (their fine heads are not run).
    assert [tuple(o.shape) for o in model(x)] == [(2, 68, 32, 32), (2, 68, 64, 64)]
    model.eval().set_exit(1)
    assert tuple(model(x).shape) == (2, 68, 64, 64)


@pytest.mark.parametrize("size", [64, 128, 192])
def test_closed_form_counts_include_the_fine_heads(size):
    model = create_model(FINE, weights=False)
    assert config_parameters(FINE) == count_parameters(model)
    assert FINE.num_values == sum(v.numel() for v in model.state_dict().values())
    assert config_macs(FINE, size) == count_macs(model, size) > config_macs(FINE.replace(head_stride=4), size)
    model.set_exit(1)
    assert config_macs(FINE, size, exit_stack=1) == count_macs(model, size)


def test_coarse_weights_start_a_fine_network_at_their_own_heatmaps(tmp_path):
    torch.manual_seed(0)
    coarse = randomise_batchnorm(create_model(FINE.replace(head_stride=4), weights=False))
    path = save_checkpoint(coarse, tmp_path / "coarse.safetensors")
    fine = create_model(str(path), head_stride=2)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = F.interpolate(coarse(x), size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(fine(x), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="cannot be turned back"):
        create_model(str(save_checkpoint(fine, tmp_path / "fine.safetensors")), head_stride=4)


def test_file_round_trip_and_inferred_config(fine_checkpoint):
    model = create_model(str(fine_checkpoint))
    assert model.config == FINE
    state = model.state_dict()
    assert infer_config(state, input_size=128) == FINE  # a bare state dict (no metadata) still says fine heads
    one = create_model(str(fine_checkpoint), stacks=1)  # stack pruning keeps the first stack's fine head
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(one(x), model.set_exit(1)(x), atol=1e-6)


def test_training_targets_are_on_the_fine_grid(tmp_path, synthetic_faces):
    from fan_edge.train import TrainSpec, train

    spec = TrainSpec(model="fan1-w32-i128", head_stride=2, sigma=2.0, data=[str(synthetic_faces)], out=str(tmp_path / "run"),
                     epochs=1, batch_size=2, workers=0, device="cpu", val=str(synthetic_faces))
    train(spec, resume=False)
    model = create_model(str(tmp_path / "run" / "best.safetensors"))
    assert model.config.fine and model.config.heatmap_size == 32 * 2


@pytest.fixture(scope="module")
def fine_exports(tmp_path_factory, fine_checkpoint, synthetic_faces):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from fan_edge.export import export_model

    out = tmp_path_factory.mktemp("fine-exports")
    common = dict(verify=synthetic_faces, verify_faces=4)  # int8 on real faces and trained weights: below
    results = export_model(str(fine_checkpoint), "onnx,openvino", "fp32", output=out / "heatmaps", **common)
    results += export_model(str(fine_checkpoint), "onnx", "fp32", outputs="landmarks", output=out / "landmarks.onnx", **common)
    return {(r.target, r.precision, r.outputs): r for r in results}


@pytest.mark.parametrize("key", [("onnx", "fp32", "heatmaps"), ("openvino", "fp32", "heatmaps"), ("onnx", "fp32", "landmarks")])
def test_fp32_exports_pass_parity_and_declare_the_fine_grid(fine_exports, fine_checkpoint, key):
    from fan_edge.rows import Status
    from fan_edge.runtime.session import LandmarkSession

    r = fine_exports[key]
    assert r.status is Status.PASSED, r
    session = LandmarkSession(r.path)
    assert session.contract.heatmap_size == 64 and session.contract.heatmap_stride == 2.0
    crops = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    got = session.run_crops(crops)
    with torch.no_grad():
        heatmaps = create_model(str(fine_checkpoint))(torch.from_numpy(crops)).numpy()
    expected, _ = decode_heatmaps(heatmaps, 128, "gaussian")
    assert got.points.shape == (2, 68, 2)
    assert np.abs(got.points - expected).max() < 0.05  # crop pixels


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_the_shipped_fine_grid_model_passes_int8_parity_on_real_faces(data_dir, tmp_path, target):
    """The fast zoo model (fine heads, 32x32 heatmaps) in int8, calibrated on HELEN and checked on AFW against the
    export's own tolerance: random weights cannot be held to it, the trained ones are."""
    if target == "tflite":
        pytest.importorskip("ai_edge_quantizer", reason="TFLite int8 needs the tflite extra")
    from fan_edge.export import export_model
    from fan_edge.rows import Status

    (r,) = export_model(
        "fan2-w64-i64-s2-lfw", target, "int8", output=tmp_path,
        int8=Int8Recipe(calib=str(data_dir / "helen_train"), calib_faces=32), verify=data_dir / "afw", verify_faces=32,
    )
    assert r.parity is not None and r.parity.faces == 32 and r.contract.heatmap_size == 32
    assert r.status is Status.PASSED, r.parity.failure


def test_tflite_exports_of_the_fine_grid(tmp_path, fine_checkpoint, synthetic_faces):
    """fp32 passes the export's parity check on the 64x64 grid; int8 exports, is checked on faces, and runs."""
    pytest.importorskip("litert_torch", reason="TFLite export needs the tflite extra")
    pytest.importorskip("ai_edge_quantizer", reason="TFLite int8 needs the tflite extra")
    from fan_edge.export import export_model
    from fan_edge.rows import Status
    from fan_edge.runtime.session import LandmarkSession

    common = dict(int8=Int8Recipe(calib=str(synthetic_faces), calib_faces=6), verify=synthetic_faces, verify_faces=4)
    results = {r.precision: r for r in export_model(str(fine_checkpoint), "tflite", "fp32,int8", output=tmp_path, **common)}
    assert results["fp32"].status is Status.PASSED, results["fp32"]
    for r in results.values():
        session = LandmarkSession(r.path)
        assert session.contract.heatmap_size == 64 and r.parity.faces == 4
        prediction = session.run_crops(np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32))
        assert prediction.heatmaps.shape[-2:] == (64, 64)


def test_coreml_export_of_the_fine_grid(tmp_path, fine_checkpoint):
    ct = pytest.importorskip("coremltools", reason="Core ML export needs the coreml extra")
    from fan_edge.export import export_model

    (r,) = export_model(str(fine_checkpoint), "coreml", "fp32", output=tmp_path)
    spec = ct.utils.load_spec(str(r.path))
    (out,) = spec.description.output
    assert out.name == "heatmaps"
    from fan_edge.export import coreml_export

    assert coreml_export.read_contract(r.path).heatmap_size == 64


def test_a_fine_target_pooled_to_the_coarse_grid_decodes_to_the_same_points():
    from fan_edge.data.heatmaps import gaussian_heatmaps
    from fan_edge.train.losses import on_grid

    points = np.random.default_rng(2).uniform(10, 118, (68, 2))
    fine = torch.from_numpy(gaussian_heatmaps(points, 128, sigma=2.0, heatmap_size=64))[None]
    coarse = on_grid(fine, 32)
    assert coarse.shape == (1, 68, 32, 32)
    decoded, _ = decode_heatmaps(coarse.numpy(), 128, "gaussian")
    assert np.abs(decoded[0] - points).max() < 0.6  # crop px, 4-px cells


def test_every_stacks_fine_head_trains_on_request_and_the_recipe_says_so(tmp_path, synthetic_faces):
    from fan_edge.cli.train import build_parser, spec_values
    from fan_edge.train import TrainSpec

    model = create_model(FINE, weights=False).train()
    model.fine_every_stack = True
    assert [tuple(o.shape) for o in model(torch.rand(1, 3, 128, 128))] == [(1, 68, 64, 64)] * 2
    args = build_parser(distill=False).parse_args(["--model", "fan2-w32-i128-s2", "--data", "d", "--fine-every-stack"])
    spec = TrainSpec(**spec_values(args))
    assert spec.fine_every_stack and "--fine-every-stack" in spec.command().split()
    assert "--fine-every-stack" not in TrainSpec(model="fan2-w32-i128-s2", data=["d"]).command()
