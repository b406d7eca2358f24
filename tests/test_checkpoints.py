"""Checkpoint formats: released state dicts, TorchScript, fan-edge's own; truncation; errors; safety."""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

from fan_edge.errors import CheckpointError, ConfigError
from fan_edge.models import (
    FAN,
    FANConfig,
    create_model,
    infer_config,
    read_checkpoint,
    save_checkpoint,
)

torch.set_num_threads(2)

SMALL = "fan2-w32-i128"


def randomize(model: FAN, seed: int) -> FAN:
    """Give every tensor (BN running statistics included) a seeded random value.

    Default BN statistics (mean 0, var 1) would hide a loader that dropped
    them, so they are randomised too; values stay moderate so the deep stack
    keeps finite outputs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif key.endswith("running_mean") or key.endswith(".bias"):
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)
            elif value.dim() == 1:  # BN weight
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            else:  # conv weights: keep kaiming-like scale
                fan_in = value[0].numel()
                value.copy_(torch.randn(value.shape, generator=g) * (1.0 / fan_in) ** 0.5)
    return model.eval()


def random_model(name: str, seed: int = 0) -> FAN:
    return randomize(create_model(name), seed)


def image(size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def run(model: FAN, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_weights(a: FAN, b: FAN, skip_counters: bool = False) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if skip_counters and k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(sa[k], sb[k]), k


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message.strip(), f"error message is not one line: {message!r}"
    return message


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fan4_reference(tmp_path_factory):
    """A random fan4, its released-layout .pth.tar, an input and the reference output."""
    model = random_model("fan4", seed=4)
    path = tmp_path_factory.mktemp("fan4") / "2DFAN4-random.pth.tar"
    torch.save(model.state_dict(), path)
    x = image(256)
    out = run(model, x)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    return model, path, x, out


@pytest.fixture(scope="module")
def small_reference():
    model = random_model(SMALL, seed=2)
    x = image(128)
    return model, x, run(model, x)


# --- 4. the released layout (.pth.tar, plain state dict) ------------------------------


def test_fan4_pth_tar_round_trip_by_path(fan4_reference):
    model, path, x, out = fan4_reference
    loaded = create_model(path)
    assert loaded.config == FANConfig()
    assert not loaded.training
    assert_same_weights(model, loaded)
    assert torch.equal(run(loaded, x), out)


def test_fan4_pth_tar_round_trip_by_name_and_weights(fan4_reference):
    model, path, x, out = fan4_reference
    loaded = create_model("fan4", weights=str(path))
    assert_same_weights(model, loaded)
    assert torch.equal(run(loaded, x), out)


def test_fan4_without_num_batches_tracked(fan4_reference, tmp_path):
    model, _, x, out = fan4_reference
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 1129 - 184  # 1,129 tensors, 184 of them counters
    path = tmp_path / "no_counters.pth.tar"
    torch.save(state, path)
    loaded = create_model(path)
    assert loaded.config == FANConfig()
    assert_same_weights(model, loaded, skip_counters=True)
    assert torch.equal(run(loaded, x), out)


def test_fan4_official_layout_from_listing(fixtures_dir, require_shared, tmp_path):
    """A file built from the official key/shape/dtype listing loads strictly and infers fan4."""
    listing = require_shared(fixtures_dir / "official_2dfan4_state_dict.tsv", "official 2DFAN-4 listing", is_file=True)
    state = {}
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("() ").split(",") if d.strip())
        state[key] = torch.full(dims, 0.5, dtype=getattr(torch, dtype.strip().removeprefix("torch.")))
    path = tmp_path / "2DFAN4-11f355bf06.pth.tar"
    torch.save(state, path)
    model = create_model(path)
    assert model.config == FANConfig()
    assert torch.equal(model.state_dict()["m3.b3_1.conv3.weight"], state["m3.b3_1.conv3.weight"])


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}, id="state_dict+module"),
        pytest.param(lambda sd: {"module." + k: v for k, v in sd.items()}, id="module"),
        pytest.param(lambda sd: {"model": sd, "epoch": 3}, id="model+epoch"),
        pytest.param(lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 1e-3}}, id="model_state_dict"),
    ],
)
def test_wrapped_state_dicts_load(small_reference, tmp_path, wrap):
    model, x, out = small_reference
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(model.state_dict()), path)
    loaded = create_model(path)
    assert loaded.config.stacks == 2 and loaded.config.width == 32
    assert_same_weights(model, loaded)
    assert torch.equal(run(loaded, x), out)
    again = create_model(SMALL, weights=path)
    assert torch.equal(run(again, x), out)


def test_legacy_torch_save_format(small_reference, tmp_path):
    model, x, out = small_reference
    path = tmp_path / "legacy.pth.tar"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    assert torch.equal(run(create_model(SMALL, weights=path), x), out)


# --- 4. TorchScript archives ------------------------------------------------------------


quiet_jit = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


@pytest.fixture(scope="module")
def torchscript_archive(small_reference, tmp_path_factory):
    model, x, out = small_reference
    path = tmp_path_factory.mktemp("ts") / "2DFAN2-small.zip"
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
    traced.save(str(path))
    return path


@quiet_jit
def test_torchscript_loads_with_trust(small_reference, torchscript_archive):
    model, x, out = small_reference
    loaded = create_model(torchscript_archive, trust=True)
    assert loaded.config.stacks == 2 and loaded.config.width == 32
    assert_same_weights(model, loaded)
    assert torch.equal(run(loaded, x), out)
    by_name = create_model(SMALL, weights=torchscript_archive, trust=True)
    assert torch.equal(run(by_name, x), out)


@quiet_jit
def test_torchscript_archive_itself_matches(small_reference, torchscript_archive):
    model, x, out = small_reference
    scripted = torch.jit.load(str(torchscript_archive))
    with torch.no_grad():
        assert torch.allclose(scripted(x), out, rtol=1e-5, atol=1e-6)


@quiet_jit
def test_torchscript_without_trust_is_refused(torchscript_archive):
    for call in (
        lambda: create_model(torchscript_archive),
        lambda: create_model(SMALL, weights=torchscript_archive),
        lambda: read_checkpoint(torchscript_archive),
    ):
        with pytest.raises(CheckpointError) as excinfo:
            call()
        message = one_line_error(excinfo)
        assert "trust" in message.lower()


# --- 4. fan-edge's own format ------------------------------------------------------------


def test_fan_edge_format_round_trip(small_reference, tmp_path):
    model, x, out = small_reference
    written = save_checkpoint(model, tmp_path / "small.safetensors", card={"note": "unit test"})
    assert written == tmp_path / "small.safetensors"
    assert written.is_file() and written.with_suffix(".json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    loaded = create_model(written)
    assert loaded.config == model.config
    assert loaded.config.input_size == 128
    assert loaded.card.get("note") == "unit test"
    assert_same_weights(model, loaded)
    assert torch.equal(run(loaded, x), out)
    checkpoint = read_checkpoint(written)
    assert checkpoint.config == model.config
    assert checkpoint.card["config"] == model.config.to_dict()


def test_fan_edge_format_config_survives_without_card(small_reference, tmp_path):
    model, x, out = small_reference
    written = save_checkpoint(model, tmp_path / "small.safetensors")
    written.with_suffix(".json").unlink()
    loaded = create_model(written)
    assert loaded.config == model.config
    assert torch.equal(run(loaded, x), out)


def test_fan_edge_format_non_default_config(tmp_path):
    cfg = FANConfig(stacks=1, width=48, input_size=192, num_landmarks=5)
    model = randomize(create_model(cfg), seed=7)
    written = save_checkpoint(model, tmp_path / "odd")
    assert written.suffix == ".safetensors"
    written.with_suffix(".json").unlink()
    assert create_model(written).config == cfg


def test_foreign_safetensors_infers_config(small_reference, tmp_path):
    """A safetensors file without fan-edge metadata still loads (config from the weights)."""
    from safetensors.torch import save_file

    model, x, out = small_reference
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = create_model(path)
    assert (loaded.config.stacks, loaded.config.width) == (2, 32)
    assert torch.equal(run(loaded, x), out)


def test_infer_config():
    cfg = infer_config(create_model("fan3-w64-i128").state_dict(), input_size=128)
    assert cfg == FANConfig(stacks=3, width=64, input_size=128)
    with pytest.raises(CheckpointError):
        infer_config({"conv1.weight": torch.zeros(1)})


# --- 5. truncation (early exit) -----------------------------------------------------------


@pytest.fixture(scope="module")
def four_stack_narrow(tmp_path_factory):
    model = random_model("fan4-w32-i128", seed=5)
    folder = tmp_path_factory.mktemp("four")
    pth = folder / "fan4-w32.pth.tar"
    torch.save(model.state_dict(), pth)
    own = save_checkpoint(model, folder / "fan4-w32.safetensors")
    x = image(128, seed=3)
    with torch.no_grad():
        stacks = model.forward_stacks(x)
    return model, pth, own, x, stacks


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_load_equals_early_stack(four_stack_narrow, fmt):
    model, pth, own, x, stacks = four_stack_narrow
    path = pth if fmt == "pth" else own
    two = create_model(path, stacks=2)
    assert two.config.stacks == 2
    assert not any(k.startswith(("m2.", "m3.", "bl1.", "al1.")) for k in two.state_dict())
    assert torch.equal(run(two, x), stacks[1])
    assert not torch.equal(stacks[1], stacks[3])


def test_truncated_load_by_name(four_stack_narrow):
    model, pth, own, x, stacks = four_stack_narrow
    one = create_model("fan1-w32-i128", weights=pth)
    assert torch.equal(run(one, x), stacks[0])


def test_cannot_grow_stacks(four_stack_narrow):
    _, pth, _, _, _ = four_stack_narrow
    with pytest.raises(ConfigError):
        create_model(pth, stacks=5)


# --- 6. mismatch and broken-file errors -----------------------------------------------------


def test_width_mismatch_names_first_key_and_shapes(tmp_path):
    path = tmp_path / "w64.pth.tar"
    torch.save(create_model("fan1-w64-i128").state_dict(), path)
    with pytest.raises(CheckpointError) as excinfo:
        create_model("fan1-w32-i128", weights=path)
    message = one_line_error(excinfo)
    # conv1.weight is the first tensor of the model; w64 stem has 16 channels, w32 has 8
    assert "conv1.weight" in message
    assert "(16, 3, 7, 7)" in message and "(8, 3, 7, 7)" in message


def test_extra_key_is_named(small_reference, tmp_path):
    model, _, _ = small_reference
    state = dict(model.state_dict())
    state["head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    for call in (lambda: create_model(path), lambda: create_model(SMALL, weights=path)):
        with pytest.raises(CheckpointError) as excinfo:
            call()
        assert "head.extra.weight" in one_line_error(excinfo)


def test_missing_key_is_named(small_reference, tmp_path):
    model, _, _ = small_reference
    state = dict(model.state_dict())
    del state["conv1.bias"]
    del state["l1.bias"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    for call in (lambda: create_model(path), lambda: create_model(SMALL, weights=path)):
        with pytest.raises(CheckpointError) as excinfo:
            call()
        message = one_line_error(excinfo)
        assert "missing" in message and "conv1.bias" in message and "l1.bias" in message
        assert message.index("conv1.bias") < message.index("l1.bias"), "the first offending key comes first"


def test_many_missing_keys_stay_one_line(small_reference, tmp_path):
    model, _, _ = small_reference
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("m1.")}
    path = tmp_path / "no_m1.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as excinfo:
        create_model(SMALL, weights=path)
    message = one_line_error(excinfo)
    assert "m1." in message and "more" in message
    assert len(message) < 1000


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth.tar"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as excinfo:
        create_model(path)
    one_line_error(excinfo)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "legacy"])
def test_truncated_file(small_reference, tmp_path, fmt):
    model, _, _ = small_reference
    whole = tmp_path / f"whole.{fmt}"
    if fmt == "safetensors":
        save_checkpoint(model, whole.with_suffix(".safetensors"))
        whole = whole.with_suffix(".safetensors")
        whole.with_suffix(".json").unlink()
    else:
        torch.save(model.state_dict(), whole, _use_new_zipfile_serialization=(fmt == "pth"))
    data = whole.read_bytes()
    half = tmp_path / f"half{whole.suffix}" if fmt == "safetensors" else tmp_path / "half.pth.tar"
    half.write_bytes(data[: len(data) // 2])
    for call in (lambda: create_model(half), lambda: create_model(SMALL, weights=half)):
        with pytest.raises(CheckpointError) as excinfo:
            call()
        one_line_error(excinfo)


@pytest.mark.parametrize(
    "text",
    [
        "this is not a checkpoint\nsecond line\n",
        "version: 1\nn_points: 68\n{\n1 2\n}\n",
        '{"stacks": 4, "width": 256}\n',
        "12345678{ not json",
    ],
)
def test_text_file(tmp_path, text):
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(CheckpointError) as excinfo:
        create_model(path)
    one_line_error(excinfo)
    with pytest.raises(CheckpointError) as excinfo:
        create_model(SMALL, weights=path)
    one_line_error(excinfo)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as excinfo:
        create_model(tmp_path / "nowhere.pth.tar")
    one_line_error(excinfo)
    with pytest.raises(CheckpointError):
        create_model("fan4", weights=tmp_path / "nowhere.pth.tar")


@pytest.mark.parametrize("payload", [[1, 2, 3], {}, {"a": 1}, torch.zeros(3)], ids=["list", "empty", "ints", "tensor"])
def test_not_a_state_dict(tmp_path, payload):
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as excinfo:
        create_model(path)
    one_line_error(excinfo)


def test_pickled_whole_module_is_refused(tmp_path):
    """``torch.save(model)`` pickles classes; reading it would import and run code, so it is refused."""
    path = tmp_path / "whole_module.pth"
    torch.save(create_model("fan1-w32-i128"), path)
    with pytest.raises(CheckpointError) as excinfo:
        create_model(path)
    one_line_error(excinfo)


def test_corrupt_card_is_a_checkpoint_error(small_reference, tmp_path):
    model, _, _ = small_reference
    written = save_checkpoint(model, tmp_path / "small.safetensors")
    written.with_suffix(".json").write_text("{ not json")
    with pytest.raises(CheckpointError) as excinfo:
        create_model(written)
    one_line_error(excinfo)


# --- 7. pickles carrying code ------------------------------------------------------------------


class _ShellPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_pickle(path, obj, how):
    if how == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)
    elif how == "torch":
        torch.save(obj, path)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=False)


def test_payload_is_real(tmp_path):
    """Sanity: the payloads do run under an unrestricted unpickler (so the refusal below means something)."""
    for cls in (_ShellPayload, _OpenPayload):
        marker = tmp_path / f"{cls.__name__}.ran"
        result = pickle.loads(pickle.dumps(cls(marker)))
        if hasattr(result, "close"):
            result.close()
        assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("how", ["pickle", "torch", "torch-legacy"])
@pytest.mark.parametrize("cls", [_ShellPayload, _OpenPayload])
@pytest.mark.parametrize("nest", ["bare", "in_state_dict"])
def test_pickle_payload_is_refused(tmp_path, how, cls, nest):
    marker = tmp_path / "PWNED"
    obj = cls(marker)
    if nest == "in_state_dict":
        obj = {"state_dict": {"conv1.weight": torch.zeros(1), "evil": obj}}
    path = tmp_path / "evil.pth.tar"
    _write_pickle(path, obj, how)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as excinfo:
        create_model(path)
    one_line_error(excinfo)
    assert not marker.exists(), "the pickle's payload ran"
    with pytest.raises(CheckpointError):
        create_model("fan4", weights=path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists(), "the pickle's payload ran"


# --- 8. every other loader: resumes, warm starts, teachers, QAT quantizers ------------------------------------


def _payload_file(path, marker):
    """A torch.save'd dict that a plain unpickler would run: os.system('touch MARKER')."""
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "epoch": _ShellPayload(marker)}, path)
    return path


def _registered_side_effect(marker: str) -> int:
    """Stands for a class or function some library registered as a torch safe global, with a side effect."""
    Path(marker).touch()
    return 0


class _RegisteredPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_registered_side_effect, (self.marker,))


def test_process_wide_safe_globals_do_not_widen_the_reader(tmp_path):
    """Libraries register globals with torch.serialization.add_safe_globals (importing torchao adds dozens, DTensor
    and DeviceMesh among them); a checkpoint is still read with torch's own allowlist, so none of them is callable."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _RegisteredPayload(marker)}}, path)
    registered = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([_registered_side_effect])
    try:
        torch.load(path, weights_only=True)  # the premise: once registered, torch alone calls it
        assert marker.exists()
        marker.unlink()
        with pytest.raises(CheckpointError) as excinfo:
            read_checkpoint(path)
        one_line_error(excinfo)
        assert not marker.exists(), "a process-wide safe global was called while reading a checkpoint"
        assert _registered_side_effect in torch.serialization.get_safe_globals(), "the registry was not restored"
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(registered)


def test_zero_stride_tensors_cannot_declare_a_huge_network(tmp_path):
    """A 2 kB file whose tensors are expanded views claims width 65536: refused before a network is allocated."""
    big = torch.zeros(1, 1, 1, 1).expand(65536, 65536, 1, 1)
    state = {"m0.b1_4.bn1.weight": torch.zeros(1), "conv_last0.weight": big, "l0.weight": big[:68]}
    path = tmp_path / "tiny-but-huge.pth"
    torch.save(state, path)
    assert path.stat().st_size < 1_000_000
    # Refused by the width bound of fan_edge.limits now (it was the parameter count before): either way no network.
    with pytest.raises(CheckpointError, match="declares a FAN of|width must be between") as excinfo:
        create_model(path)
    one_line_error(excinfo)


def test_safetensors_config_must_fit_its_weights(tmp_path):
    from safetensors.torch import save_file

    from fan_edge.models.checkpoints import CONFIG_METADATA_KEY

    huge = FANConfig(stacks=1, width=32).to_dict() | {"stacks": 8, "width": 1024}  # FANConfig refuses to make it
    cases = ((json.dumps(huge), "declares a FAN of"), (FANConfig(stacks=1, width=32).to_json(), "does not fit"))
    for config, message in cases:
        path = tmp_path / f"liar{len(config)}.safetensors"
        save_file({"conv1.weight": torch.zeros(2, 3, 7, 7)}, str(path), metadata={CONFIG_METADATA_KEY: config})
        with pytest.raises(CheckpointError, match=message) as excinfo:
            create_model(path)
        one_line_error(excinfo)


@pytest.mark.parametrize(
    "state",
    [
        {1: torch.zeros(1)},
        {"conv1.weight": torch.zeros(2, dtype=torch.complex64)},
        {"conv1.weight": torch.zeros(3, 3).to_sparse()},
        {"conv1.weight": torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)},
    ],
    ids=["int-key", "complex", "sparse", "quantized"],
)
def test_only_plain_tensors_under_string_keys(tmp_path, state):
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    # Sparse and quantized tensors are refused while unpickling now: their rebuild functions are not on the allow-list.
    with pytest.raises(CheckpointError, match="not a state dict of tensors|not just tensors") as excinfo:
        read_checkpoint(path)
    one_line_error(excinfo)


def _train_spec(tmp_path, **changes):
    from fan_edge.train import TrainSpec

    values = dict(model="fan1-w32-i128", data=[str(tmp_path / "no-faces")], out=str(tmp_path / "run"), device="cpu", epochs=1)
    values.update(changes)
    return TrainSpec(**values)


@pytest.mark.parametrize("kind", ["payload", "truncated", "foreign", "wrong-type"])
def test_training_resume_refuses_bad_last_ckpt(tmp_path, kind, monkeypatch):
    """fan-train resumes from OUT/last.ckpt: a payload is refused unrun, damage is one line, never a KeyError."""
    from fan_edge.train import train
    from fan_edge.train.trainer import LAST

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    spec = _train_spec(tmp_path)
    last = Path(spec.out) / LAST
    last.parent.mkdir(parents=True)
    if kind == "payload":
        _payload_file(last, marker)
    elif kind == "truncated":
        torch.save({"model": create_model("fan1-w32-i128").state_dict(), "epoch": 1}, last)
        last.write_bytes(last.read_bytes()[:5000])
    elif kind == "foreign":
        torch.save(create_model("fan1-w32-i128").state_dict(), last)  # a plain state dict: no epoch, spec, optimizer
    else:
        entries = {"model": {}, "optimizer": {}, "epoch": "3", "batch": 0, "best": {}, "history": [], "spec": {}, "config": {}}
        torch.save(entries, last)
    with pytest.raises(CheckpointError) as excinfo:
        train(spec)
    message = one_line_error(excinfo)
    assert str(last) in message
    assert not marker.exists(), "the pickle's payload ran"


def test_warm_start_and_distillation_teacher_refuse_payloads(tmp_path, capsys):
    """--init and fan-distill --teacher read checkpoints like every other loader: refused unrun, one line at the CLI."""
    from fan_edge.cli import distill_main, train_main

    marker = tmp_path / "PWNED"
    evil = _payload_file(tmp_path / "2DFAN4-11f355bf06.pth.tar", marker)
    common = ["--data", str(tmp_path / "no-faces"), "--model", "fan1-w32-i128", "--device", "cpu", "--epochs", "1"]
    assert distill_main([*common, "--teacher", str(evil), "--out", str(tmp_path / "distill")]) == 2
    assert train_main([*common, "--init", str(evil), "--out", str(tmp_path / "warm")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 2 and all("refused to load" in line and str(evil) in line for line in errors), errors
    assert not marker.exists(), "the pickle's payload ran"


def test_qat_resume_refuses_a_payload(tmp_path, monkeypatch):
    from fan_edge.quantize.qat import LAST, QATSpec, train_qat

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    spec = QATSpec(train=_train_spec(tmp_path))
    Path(spec.train.out).mkdir(parents=True)
    _payload_file(Path(spec.train.out) / LAST, marker)
    with pytest.raises(CheckpointError) as excinfo:
        train_qat(spec)
    one_line_error(excinfo)
    assert not marker.exists(), "the pickle's payload ran"


# One command as NNCF 3.4's get_config writes it for fan-quantize --qat (a per-channel weight quantizer).
_QUANTIZER = {
    "hook_names_in_model": ["pre_hooks.conv1/conv2d/0__1.0"],
    "module_path": "nncf.torch.quantization.layers",
    "module_cls_name": "SymmetricQuantizer",
    "module_config": {"num_bits": 8, "mode": "symmetric", "signedness_to_force": True, "narrow_range": True, "half_range": False,
                      "scale_shape": [8, 1, 1, 1], "logarithm_scale": False, "is_quantized_on_export": False},
}


def _command(**changes):
    import copy

    command = copy.deepcopy(_QUANTIZER)
    for key, value in changes.items():
        if key in command["module_config"]:
            command["module_config"][key] = value
        else:
            command[key] = value
    return {"compression_state": [command]}


@pytest.mark.parametrize(
    "config",
    [
        _command(module_path="os", module_cls_name="system"),
        _command(module_path="nncf.common.utils.os_utils", module_cls_name="SymmetricQuantizer"),
        _command(module_cls_name="BaseQuantizer"),
        _command(scale_shape=[100000, 100000, 1, 1]),
        _command(num_bits=True),
        _command(mode="exotic"),
        _command(hook_names_in_model="pre_hooks.conv1"),
        {"compression_state": [{**_QUANTIZER, "extra": 1}]},
        {"compression_state": "all"},
        [],
    ],
    ids=["os.system", "other-nncf-module", "other-class", "huge-scales", "bool-bits", "mode", "hooks-not-list", "extra-field",
         "not-a-list", "not-a-dict"],
)
def test_nncf_configs_are_checked_before_nncf_sees_them(config):
    from fan_edge.quantize.qat import check_nncf_config

    with pytest.raises(CheckpointError) as excinfo:
        check_nncf_config(config, "model.qat.safetensors")
    one_line_error(excinfo)


def test_nncf_config_as_written_is_accepted():
    from fan_edge.quantize.qat import check_nncf_config

    config = {"compression_state": [_QUANTIZER, {**_QUANTIZER, "module_cls_name": "AsymmetricQuantizer"}]}
    assert check_nncf_config(config, "x") is config


@pytest.mark.parametrize("kind", ["payload-config", "corrupt", "not-json", "foreign-tensors"])
def test_load_qat_refuses_bad_quantizer_files(small_reference, tmp_path, kind):
    import json

    from safetensors.torch import save_file

    from fan_edge.quantize.qat import CONFIG_KEY, load_qat, qat_path

    model, _, _ = small_reference
    ckpt = save_checkpoint(model, tmp_path / "qat.safetensors")
    quantizers = qat_path(ckpt)
    hooks = {"__nncf_hooks.pre_hooks.conv1/conv2d/0__1.0._scale_param_storage": torch.ones(8, 1, 1, 1)}
    if kind == "payload-config":
        save_file(hooks, str(quantizers), metadata={CONFIG_KEY: json.dumps(_command(module_path="os", module_cls_name="system"))})
    elif kind == "corrupt":
        save_file(hooks, str(quantizers), metadata={CONFIG_KEY: json.dumps(_command())})
        quantizers.write_bytes(quantizers.read_bytes()[:40])
    elif kind == "not-json":
        save_file(hooks, str(quantizers), metadata={CONFIG_KEY: "{" * 100000})
    else:
        save_file({"conv1.weight": torch.zeros(1)}, str(quantizers), metadata={CONFIG_KEY: json.dumps(_command())})
    with pytest.raises(CheckpointError) as excinfo:
        load_qat(ckpt)
    one_line_error(excinfo)


def test_weights_keep_their_own_crop_and_refinement(tmp_path):
    """``create_model(name, weights=ckpt)``: the checkpoint's crop and refinement are how it was trained; the
    name's defaults would shift every landmark, so they must not win."""
    from fan_edge.models import Weights
    from fan_edge.runtime.crop import CropSpec

    trained = FAN(FANConfig(stacks=1, width=32, input_size=64),
                  Weights(crop=CropSpec(reference_scale=280.0, center_shift=0.0), refine="gaussian"))
    path = tmp_path / "trained.safetensors"
    save_checkpoint(trained, path)
    model = create_model("fan1-w32-i64", weights=path)
    assert model.weights.crop == trained.weights.crop and model.weights.refine == "gaussian"
    assert model.weights.file == str(path) and model.weights.name == "trained"
    assert create_model("fan1-w32-i64", weights=False).weights.crop != trained.weights.crop
    assert create_model(path).weights == model.weights  # by path: the same record
    assert create_model(model.weights).weights == model.weights  # by record: its file


# --- 10. the weights record: crop and refinement belong to the weights ------------------------------------------

LEGACY_CROP = {"center_shift": 0.0, "reference_scale": 280.0, "window": 200.0}


def test_config_is_architecture_only():
    """FANConfig holds no crop or refinement; a stored config that does (an older file) reads through split_config."""
    from fan_edge.models.pretrained import split_config

    assert "crop" not in FANConfig().to_dict() and "refine" not in FANConfig().to_dict()
    with pytest.raises(ConfigError, match="belong to the weights"):
        FANConfig.from_dict({"stacks": 1, "crop": LEGACY_CROP})
    config, legacy = split_config({"stacks": 1, "width": 32, "input_size": 64, "crop": LEGACY_CROP, "refine": "gaussian"})
    assert config == FANConfig(stacks=1, width=32, input_size=64)
    assert legacy == {"crop": LEGACY_CROP, "refine": "gaussian"}


def test_new_files_keep_the_record_beside_the_architecture(tmp_path):
    """Card and metadata: ``config`` is the architecture; crop and refine are the weights' (top-level in the card)."""
    from safetensors import safe_open

    from fan_edge.models import Weights
    from fan_edge.models.pretrained import WEIGHTS_METADATA_KEY

    model = FAN(FANConfig(stacks=1, width=32, input_size=64), Weights(crop=LEGACY_CROP, refine="gaussian"))
    path = save_checkpoint(model, tmp_path / "new.safetensors", card={"crop": {"window": 1.0}, "note": "kept"})
    card = json.loads(path.with_suffix(".json").read_text())
    assert "crop" not in card["config"] and "refine" not in card["config"]
    assert card["crop"] == LEGACY_CROP and card["refine"] == "gaussian" and card["note"] == "kept"  # the weights' own win
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta[WEIGHTS_METADATA_KEY]) == {"crop": LEGACY_CROP, "refine": "gaussian"}
    assert "crop" not in json.loads(meta["fan_edge_config"])


def _legacy_safetensors(model: FAN, path: Path, card: bool = True, metadata: bool = True) -> Path:
    """A file as fan-edge wrote them before the weights record: crop and refine inside the config."""
    from safetensors.torch import save_file

    config = {**model.config.to_dict(), "crop": LEGACY_CROP, "refine": "gaussian"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"fan_edge_config": json.dumps(config), "fan_edge_version": "0.1.0"} if metadata else None)
    if card:
        path.with_suffix(".json").write_text(json.dumps({"config": config, "fan_edge_version": "0.1.0", "note": "old"}))
    return path


@pytest.mark.parametrize("where", ["both", "metadata", "card"])
def test_older_files_load_with_their_own_crop_and_refinement(small_reference, tmp_path, where):
    model, x, out = small_reference
    path = _legacy_safetensors(model, tmp_path / "old.safetensors", card=where != "metadata", metadata=where != "card")
    checkpoint = read_checkpoint(path)
    assert checkpoint.config == model.config
    assert checkpoint.weights.crop.reference_scale == 280.0 and checkpoint.weights.refine == "gaussian"
    loaded = create_model(path)
    assert loaded.config == model.config and loaded.weights.refine == "gaussian"
    assert loaded.weights.crop.to_dict() == LEGACY_CROP
    assert torch.equal(run(loaded, x), out)
    # And written again, the record moves out of the config and survives.
    again = read_checkpoint(save_checkpoint(loaded, tmp_path / "again.safetensors"))
    assert again.weights == loaded.weights.replace(name="again", file=str(tmp_path / "again.safetensors"))


def test_released_state_dicts_get_fans_own_conventions(fan4_reference):
    """A 2DFAN-4 .pth.tar says nothing of its crop: FAN's released one (195, 0.12) and quarter-pixel refinement."""
    from fan_edge.runtime.crop import CropSpec

    _, path, _, _ = fan4_reference
    record = create_model(path).weights
    assert record.crop == CropSpec() and record.refine == "quarter" and record.file == str(path)


def test_bad_record_in_a_file_is_a_checkpoint_error(small_reference, tmp_path):
    from safetensors.torch import save_file

    from fan_edge.models.pretrained import WEIGHTS_METADATA_KEY

    model, _, _ = small_reference
    for bad in ({"refine": "soft"}, {"crop": {"zoom": 2}}, {"color": 1}, ["crop"]):
        path = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata={"fan_edge_config": model.config.to_json(), WEIGHTS_METADATA_KEY: json.dumps(bad)})
        with pytest.raises(CheckpointError, match="bad fan-edge metadata") as excinfo:
            read_checkpoint(path)
        one_line_error(excinfo)


def test_training_state_config_round_trips_the_record():
    from fan_edge.models import Weights
    from fan_edge.models.pretrained import combined_config, config_and_weights

    config, record = FANConfig(stacks=1, width=32, input_size=64), Weights(crop=LEGACY_CROP, refine="gaussian")
    assert config_and_weights(combined_config(config, record)) == (config, record)
    # a state saved before the record (crop and refine inside its config) reads the same
    assert config_and_weights({**config.to_dict(), "crop": LEGACY_CROP, "refine": "gaussian"}) == (config, record)


def test_derived_networks_keep_the_record():
    """Pruning and float copies build a new FAN from the old config: the weights' record goes with it."""
    from fan_edge.models import Weights
    from fan_edge.quantize.pruning.structured import drop_stacks

    record = Weights(name="x", crop=LEGACY_CROP, refine="gaussian")
    model = FAN(FANConfig(stacks=2, width=32, input_size=64), record)
    assert drop_stacks(model, 1).weights == record
