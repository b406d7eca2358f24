"""The FAN family: released layout, sizes, forward contract, configs and names."""

from __future__ import annotations

import json

import pytest
import torch

from fan_edge.errors import ConfigError
from fan_edge.models import (
    FAN,
    FANConfig,
    count_macs,
    count_parameters,
    create_model,
    get_entry,
    list_models,
)
from fan_edge.models.registry import config_from_name

torch.set_num_threads(2)

OFFICIAL_LISTING = "official_2dfan4_state_dict.tsv"


def _read_listing(path) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        assert key not in rows, f"duplicate key {key} in {path.name}"
        rows[key] = (shape.strip(), dtype.strip())
    return rows


@pytest.fixture(scope="module")
def fan4() -> FAN:
    return create_model("fan4")


# --- 1. the released 2DFAN-4 layout ------------------------------------------------


def test_fan4_state_dict_matches_official_listing(fan4, fixtures_dir, require_shared):
    listing = _read_listing(require_shared(fixtures_dir / OFFICIAL_LISTING, "official 2DFAN-4 listing", is_file=True))
    ours = {k: (str(tuple(v.shape)), str(v.dtype)) for k, v in fan4.state_dict().items()}
    missing = sorted(set(listing) - set(ours))
    extra = sorted(set(ours) - set(listing))
    assert not missing, f"{len(missing)} official keys missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} keys not in the official file, e.g. {extra[:5]}"
    wrong = [(k, ours[k], listing[k]) for k in listing if ours[k] != listing[k]]
    assert not wrong, f"{len(wrong)} keys differ in shape/dtype (ours, official), e.g. {wrong[:5]}"
    assert len(ours) == len(listing)
    assert sum(1 for k in listing if k.endswith("num_batches_tracked")) == 184


def test_fan4_is_the_default_config(fan4):
    assert fan4.config == FANConfig()
    assert fan4.config.stacks == 4 and fan4.config.width == 256 and fan4.config.input_size == 256
    assert fan4.config.stem_channels == (64, 128, 128, 256)
    assert not fan4.training, "create_model returns an eval-mode model"


# --- 2. parameters and MACs -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, params",
    [("fan1", 6_249_668), ("fan2", 12_106_504), ("fan3", 17_963_340), ("fan4", 23_820_176)],
)
def test_parameter_counts_of_released_width(name, params):
    model = create_model(name)
    assert count_parameters(model) == params


def test_fan4_macs(fan4):
    macs = count_macs(fan4, 256)
    assert macs == pytest.approx(25.2e9, rel=0.01)


def test_fan1_macs():
    macs = count_macs(create_model("fan1"), 256)
    assert macs == pytest.approx(8.27e9, rel=0.01)


def test_macs_fall_with_the_square_of_the_input():
    model = create_model("fan1-w32-i128")
    m128, m256 = count_macs(model, 128), count_macs(model, 256)
    assert m256 == pytest.approx(4 * m128, rel=1e-6)


def test_count_macs_keeps_training_mode():
    model = create_model("fan1-w32-i128")
    model.train()
    count_macs(model, 128)
    assert model.training
    model.eval()
    count_macs(model, 128)
    assert not model.training


def test_early_exit_does_not_compute_later_stacks():
    """Exit after stack 1 of a 3-stack model costs what a 1-stack model costs."""
    three = create_model("fan3-w32-i128")
    one = create_model("fan1-w32-i128")
    full = count_macs(three, 128)
    three.set_exit(1)
    assert count_macs(three, 128) == count_macs(one, 128) < full


@pytest.mark.parametrize("name", list_models())
def test_closed_form_counts_are_the_forward_pass_counts(name):
    """What fan-edge models and info print (card or closed form, no forward pass) is exactly what the graph counts."""
    from fan_edge.models.complexity import config_macs, config_parameters, entry_complexity

    entry = get_entry(name)
    model = create_model(entry.config, weights=False)
    counted = count_parameters(model), count_macs(model, entry.config.input_size)
    assert (config_parameters(entry.config), config_macs(entry.config)) == counted
    assert entry_complexity(entry) == counted  # a zoo card's figures included


# A consistent pruned layout of width 32: a narrower stem (conv3's identity shortcut keeps conv2's 14), hourglass and
# top_m blocks re-split within the trunk's 32, narrower and wider conv_last.
PRUNED = {"conv1": 6, "conv2.conv1": 6, "conv3.conv1": 6, "m0.b1_3.conv1": 12, "m0.b1_3.conv2": 12,
          "m1.b2_plus_1.conv3": 4, "m1.b2_plus_1.conv1": 20, "top_m_0.conv2": 4, "top_m_0.conv3": 12,
          "conv_last0": 24, "conv_last1": 40}


@pytest.mark.parametrize("channels", [None, PRUNED])
def test_closed_form_counts_of_pruned_layouts_early_exits_and_other_sizes(channels):
    from fan_edge.models.complexity import config_macs, config_parameters

    config = FANConfig(stacks=2, width=32, input_size=128, num_landmarks=19, hourglass_depth=3, channels=channels)
    model = create_model(config, weights=False)
    assert config_parameters(config) == count_parameters(model)
    for size in (64, 128, 192):
        assert config_macs(config, size) == count_macs(model, size)
    model.set_exit(1)
    assert config_macs(config, exit_stack=1) == count_macs(model, 128) < config_macs(config)


def test_models_and_info_start_without_torch():
    """fan-edge models and fan-edge info NAME read cards and count in closed form: no torch import (1.8 s alone)."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys; from fan_edge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    codes = [main(['models']), main(['models', '--markdown']), main(['info', 'default']), main(['info', 'fan4', '--json'])]\n"
            "print(codes, 'torch' in sys.modules, len(out.getvalue()) > 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[0, 0, 0, 0] False True", done.stderr


def test_info_of_a_fan_edge_file_reads_its_header_without_torch(tmp_path):
    """fan-edge info FILE.safetensors answers from the header (no torch); a file whose tensors do not add up to its
    config is left to the full reader, which refuses it in one line."""
    import json
    import subprocess
    import sys

    from safetensors.numpy import load_file, save_file

    from fan_edge.models import save_checkpoint
    from fan_edge.models.table import fan_edge_file_summary, model_summary

    path = save_checkpoint(create_model("fan2-w32-i128-s2", weights=False), tmp_path / "m.safetensors")
    code = ("import contextlib, io, json, sys; from fan_edge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    code = main(['info', {str(path)!r}, '--json'])\n"
            "print(json.dumps([code, 'torch' in sys.modules, json.loads(out.getvalue())]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    code, torch_loaded, fast = json.loads(done.stdout)
    assert (code, torch_loaded) == (0, False), done.stderr
    full = model_summary(str(path)) | {"model": fast["model"]}
    tensors = load_file(str(path))
    assert fast == json.loads(json.dumps(full)) and fast["heatmap_size"] == 64
    # Metadata that claims another architecture than the tensors hold: not summarised from the metadata.
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
    metadata["fan_edge_config"] = json.dumps({**json.loads(metadata["fan_edge_config"]), "stacks": 1})
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), metadata=metadata)
    assert fan_edge_file_summary(str(forged)) is None


def test_narrow_variants_shrink_the_stem():
    cfg = config_from_name("fan1-w64-i128")
    assert cfg.stem_channels == (16, 32, 32, 64)
    assert count_parameters(create_model("fan1-w64")) < count_parameters(create_model("fan1-w128")) < 6_249_668


# --- 3. forward contract --------------------------------------------------------------


@pytest.mark.parametrize("name, size", [("fan2-w32-i256", 256), ("fan2-w32-i192", 192), ("fan2-w32-i128", 128)])
def test_training_mode_returns_every_stack(name, size):
    torch.manual_seed(0)
    model = create_model(name)
    assert model.config.input_size == size and model.config.heatmap_size == size // 4
    model.train()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, list) and len(out) == 2
    for heatmaps in out:
        assert isinstance(heatmaps, torch.Tensor)
        assert heatmaps.shape == (2, 68, size // 4, size // 4)
        assert torch.isfinite(heatmaps).all()


@pytest.mark.parametrize("name, size", [("fan2-w32-i256", 256), ("fan2-w32-i192", 192), ("fan2-w32-i128", 128)])
def test_eval_mode_returns_last_stack(name, size):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        stacks = model.forward_stacks(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 68, size // 4, size // 4)
    assert len(stacks) == 2
    assert torch.equal(out, stacks[-1])


def test_fan4_eval_forward_shape(fan4):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = fan4(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 68, 64, 64)
    assert torch.isfinite(out).all()


def test_set_exit_returns_that_stacks_heatmaps():
    torch.manual_seed(0)
    model = create_model("fan3-w32-i128").eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        stacks = model.forward_stacks(x)
        assert len(stacks) == 3
        for k in (1, 2, 3):
            assert model.set_exit(k) is model
            out = model(x)
            assert torch.equal(out, stacks[k - 1]), f"exit {k}"
        # the stacks really differ, so the equalities above are not vacuous
        assert not torch.equal(stacks[0], stacks[2])
        assert torch.equal(model.forward_stacks(x, 2)[-1], stacks[1])


def test_set_exit_rejects_out_of_range():
    model = create_model("fan2-w32-i128")
    for bad in (0, 3, -1):
        with pytest.raises(ValueError):
            model.set_exit(bad)


def test_training_mode_ignores_exit():
    model = create_model("fan2-w32-i128").set_exit(1)
    model.train()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 128, 128))
    assert isinstance(out, list) and len(out) == 2


def test_input_size_override():
    model = create_model("fan1-w32-i128", input_size=192)
    assert model.config.input_size == 192
    with torch.no_grad():
        assert model(torch.rand(1, 3, 192, 192)).shape == (1, 68, 48, 48)


# --- 8. configs and names -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stacks": 0},
        {"stacks": -1},
        {"stacks": 9},
        {"width": 0},
        {"width": 16},
        {"width": 24},
        {"width": 100},
        {"input_size": 100},
        {"input_size": 250},
        {"input_size": 32},
        {"num_landmarks": 0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        FANConfig(**kwargs)


@pytest.mark.parametrize("size", [0, -64])
def test_config_rejects_non_positive_input_size(size):
    """0 and negative sizes are multiples of 64 too; only a positive size makes a network."""
    with pytest.raises(ConfigError):
        FANConfig(input_size=size)


@pytest.mark.parametrize("kwargs", [{"stacks": 1}, {"stacks": 8}, {"width": 32}, {"width": 48}, {"input_size": 192}])
def test_config_accepts_valid(kwargs):
    FANConfig(**kwargs)


def test_config_replace_validates():
    with pytest.raises(ConfigError):
        FANConfig().replace(width=20)


def test_config_dict_round_trip():
    cfg = FANConfig(stacks=2, width=128, input_size=128)
    assert FANConfig.from_dict(cfg.to_dict()) == cfg
    assert FANConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("data", [{"stacks": 2, "colour": 1}, {"stacks": "two"}])
def test_config_from_bad_dict(data):
    with pytest.raises(ConfigError):
        FANConfig.from_dict(data)


@pytest.mark.parametrize(
    "name, stacks, width, size",
    [
        ("fan4", 4, 256, 256),
        ("fan1", 1, 256, 256),
        ("fan2-w128", 2, 128, 256),
        ("fan2-w128-i128", 2, 128, 128),
        ("fan1-w64-i128", 1, 64, 128),
        ("fan3-i192", 3, 256, 192),
    ],
)
def test_config_from_name(name, stacks, width, size):
    cfg = config_from_name(name)
    assert (cfg.stacks, cfg.width, cfg.input_size) == (stacks, width, size)


@pytest.mark.parametrize(
    "name",
    ["fan", "fan0", "fan9", "fan10", "FAN4", "fan4-w", "fan4-w100", "fan2-i100", "fan4-i128-w64", "resnet50", "", "fan4 "],
)
def test_unknown_names_raise_config_error(name):
    with pytest.raises(ConfigError):
        config_from_name(name)
    with pytest.raises(ConfigError):
        create_model(name)


def test_registry_lists_the_variants():
    names = list_models()
    for name in ("fan4", "fan1", "fan2-w128-i128", "fan1-w32-i128"):
        assert name in names
        assert get_entry(name).config == config_from_name(name)
    assert "default" in names
    # unlisted but well-formed names are accepted
    assert get_entry("fan3-w64-i192").config == FANConfig(stacks=3, width=64, input_size=192)


def test_create_model_from_config():
    cfg = FANConfig(stacks=1, width=32, input_size=128)
    model = create_model(cfg)
    assert model.config == cfg and not model.training


def test_untrained_weights_false():
    model = create_model("fan1-w32-i128", weights=False)
    assert model.config == config_from_name("fan1-w32-i128")


def test_weights_records_of_registry_names():
    """A zoo name's record (crop, refinement, card) comes from its card, torch-free, and is what the loaded model
    carries; an architecture name's is untrained, with FAN's released crop and quarter-pixel refinement."""
    from fan_edge.models import Weights, get_weights
    from fan_edge.runtime.crop import CropSpec

    untrained = get_weights("fan2-w64-i128")
    assert not untrained.trained and untrained.crop == CropSpec() and untrained.refine == "quarter"
    assert create_model("fan2-w64-i128").weights == untrained
    zoo = [n for n in list_models() if get_entry(n).pretrained is not None and n != "default"]
    assert zoo, "no zoo model registered"
    for name in zoo:
        record = get_weights(name)
        assert record.trained and record.name == name and record.meta.get("figures")
        assert record.crop.reference_scale == 280.0 and record.refine == "gaussian"  # how the zoo was trained
    default = create_model("default")
    assert default.weights == get_weights("default") and default.weights.name != "default"
    assert default.card == get_entry("default").card()
    assert isinstance(default.weights, Weights) and hash(default.weights) == hash(get_weights("default"))


def test_weights_record_validates():
    from fan_edge.models import Weights

    with pytest.raises(ConfigError):
        Weights(refine="soft")
    with pytest.raises(ConfigError):
        Weights(crop={"zoom": 1})
    assert Weights(crop={"reference_scale": 280}).crop.reference_scale == 280.0
