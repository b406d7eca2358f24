"""Devices and threads of the runtime: discovery, mapping, one-line errors, and 8 threads against a sequential run."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fan_edge.errors import BackendError
from fan_edge.runtime.backends import BACKENDS, available_devices, backend_class
from fan_edge.runtime.backends import litert_backend, onnxruntime_backend, openvino_backend
from fan_edge.runtime.backends.pool import InstancePool
from fan_edge.runtime.session import LandmarkSession

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def tflite_path(micro_tflite):
    """A small FAN (1 stack, width 32, hourglass depth 1: the quickest to convert) as fp32 TFLite (conftest.py)."""
    return micro_tflite


@pytest.fixture(scope="module")
def artifacts(exported, tflite_path):
    onnx = exported[("onnx", "fp32", "heatmaps")].path
    return {"onnxruntime": onnx, "openvino": onnx, "litert": tflite_path}


# ---- discovery on this machine -----------------------------------------------------------------------


def test_every_backend_lists_the_cpu_and_auto_lands_on_a_listed_device(artifacts):
    found = available_devices()
    assert set(found) == set(BACKENDS)
    for name, devices in found.items():
        assert "cpu" in devices and devices == [d.lower() for d in devices]
        with LandmarkSession(artifacts[name], backend=name, device="auto") as session:
            assert session.device in devices and session.backend.device == session.device
            assert f"device={session.device}" in repr(session)
        with LandmarkSession(artifacts[name], backend=name, device=" CPU ") as session:
            assert session.device == "cpu"


ABSENT = {
    "onnxruntime": ["gpu", "npu", "cuda", "tensorrt", "qnn", "coreml", "directml", "openvino", "quantum"],
    "openvino": ["gpu", "npu", "gpu.1", "quantum"],
    "litert": ["gpu", "npu", "cuda"],
}


@pytest.mark.parametrize("backend, device", [(b, d) for b, ds in ABSENT.items() for d in ds])
def test_an_absent_device_is_a_one_line_error_listing_what_is_present(artifacts, backend, device):
    present = backend_class(backend).devices()
    if device in present:
        pytest.skip(f"{device} is present here")
    with pytest.raises(BackendError) as info:
        LandmarkSession(artifacts[backend], backend=backend, device=device)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"device {device!r} is not available to the {backend} backend")
    assert message.endswith(f"present: {', '.join(present)}")


@pytest.mark.parametrize("device", [None, 3, "", "  "])
def test_a_device_that_is_not_a_name(artifacts, device):
    with pytest.raises(BackendError, match="device must be a name"):
        LandmarkSession(artifacts["onnxruntime"], device=device)


# ---- mapping, with the libraries' answers replaced where this machine has no accelerator -------------


def test_onnxruntime_provider_chains():
    chain = onnxruntime_backend._provider_list("tensorrt", "1")
    assert [p for p, _ in chain] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chain[0][1]["device_id"] == "1" and chain[0][1]["trt_engine_cache_enable"] == "True"
    assert chain[1][1] == {"device_id": "1"}
    assert onnxruntime_backend._provider_list("openvino", "npu")[0] == ("OpenVINOExecutionProvider", {"device_type": "NPU"})
    assert onnxruntime_backend._provider_list("qnn", None)[0] == ("QNNExecutionProvider", {"backend_type": "htp"})
    assert onnxruntime_backend._provider_list("coreml", "cpuandneuralengine")[0][1] == {"MLComputeUnits": "CPUAndNeuralEngine"}
    assert onnxruntime_backend._provider_list("cpu", None) == [("CPUExecutionProvider", {})]
    with pytest.raises(BackendError, match="device number"):
        onnxruntime_backend._provider_list("cuda", "x")
    with pytest.raises(BackendError, match="no ':' suffix"):
        onnxruntime_backend._provider_list("cpu", "1")


def test_onnxruntime_candidates():
    present = ["tensorrt", "cuda", "qnn", "cpu"]
    assert onnxruntime_backend._candidates("auto", present) == [("cuda", None), ("cpu", None)]
    assert onnxruntime_backend._candidates("gpu", present) == [("cuda", None)]
    assert onnxruntime_backend._candidates("gpu:1", present) == [("cuda", "1")]
    assert onnxruntime_backend._candidates("npu", present) == [("qnn", None)]
    assert onnxruntime_backend._candidates("tensorrt:0", present) == [("tensorrt", "0")]
    with pytest.raises(BackendError, match=r"'coreml' .*present: tensorrt, cuda, qnn, cpu"):
        onnxruntime_backend._candidates("coreml", present)


def test_onnxruntime_provider_that_does_not_start(artifacts, monkeypatch):
    """A provider compiled in but without its hardware: onnxruntime falls back to the CPU silently; fan-edge does not."""
    monkeypatch.setattr(onnxruntime_backend, "_available", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning):  # onnxruntime's own warning about the provider it cannot find
        with pytest.raises(BackendError, match=r"device 'cuda' .*\(cuda: its execution provider did not start\); present: cuda, cpu"):
            LandmarkSession(artifacts["onnxruntime"], device="cuda")
    with pytest.warns(UserWarning):
        with LandmarkSession(artifacts["onnxruntime"], device="auto") as session:  # auto moves on to the CPU
            assert session.device == "cpu"


class _FakeCore:
    def __init__(self, devices, discrete=()):
        self.available_devices = devices
        self.discrete = set(discrete)

    def get_property(self, device, name):
        assert name == "DEVICE_TYPE"
        return "Type.DISCRETE" if device in self.discrete else "Type.INTEGRATED"


def test_openvino_device_resolution():
    core = _FakeCore(["CPU", "GPU.0", "GPU.1", "NPU"], discrete={"GPU.1"})
    assert openvino_backend._ranked(core) == ["GPU.1", "GPU.0", "CPU", "NPU"]
    assert openvino_backend._resolve(core, "auto") == "GPU.1"  # OpenVINO AUTO's order: discrete, integrated, CPU
    assert openvino_backend._resolve(core, "gpu") == "GPU.1"
    assert openvino_backend._resolve(core, "gpu.0") == "GPU.0"
    assert openvino_backend._resolve(core, "npu") == "NPU"
    assert openvino_backend._resolve(core, "cpu") == "CPU"
    assert openvino_backend._resolve(_FakeCore(["CPU", "NPU"]), "auto") == "CPU"  # the NPU only when named
    assert openvino_backend._resolve(_FakeCore(["CPU", "GPU"]), "gpu.0") == "GPU"
    with pytest.raises(BackendError, match=r"'gpu' .*present: cpu, npu"):
        openvino_backend._resolve(_FakeCore(["CPU", "NPU"]), "gpu")


def test_openvino_device_that_fails_to_compile(artifacts, monkeypatch):
    """A device listed but unable to compile (here: no GPU plugin behind the name) is a one-line device error."""
    monkeypatch.setattr(openvino_backend, "_available", lambda core: ["CPU", "GPU"])
    with pytest.raises(BackendError, match=r"device 'gpu' is not available to the openvino backend \(GPU failed to compile it") as info:
        LandmarkSession(artifacts["openvino"], backend="openvino", device="gpu")
    assert "\n" not in str(info.value) and str(info.value).endswith("present: gpu, cpu")
    with LandmarkSession(artifacts["openvino"], backend="openvino", device="auto") as session:  # the GPU fails: the CPU serves
        assert session.device == "cpu"


def test_litert_delegates(artifacts, monkeypatch, tmp_path):
    import ctypes.util

    import ai_edge_litert.interpreter

    monkeypatch.setenv("FAN_EDGE_LITERT_GPU_DELEGATE", str(tmp_path / "missing_delegate.so"))
    assert litert_backend.delegate_library("gpu") is None
    monkeypatch.setenv("FAN_EDGE_LITERT_GPU_DELEGATE", ctypes.util.find_library("m"))  # loads, but is no delegate
    assert litert_backend.delegate_library("gpu") is None
    assert "gpu" not in litert_backend.LiteRTBackend.devices()
    # A delegate that is listed but fails to start: the device error says why, in one line.
    monkeypatch.setattr(litert_backend, "delegate_library", lambda device: "libfake_gpu_delegate.so" if device == "gpu" else None)

    def refuse(library, options=None):
        raise ValueError(f"Failed to load delegate from {library}\nno GPU here")

    monkeypatch.setattr(ai_edge_litert.interpreter, "load_delegate", refuse)
    assert litert_backend.LiteRTBackend.devices() == ["gpu", "cpu"]
    with pytest.raises(BackendError, match=r"device 'gpu' is not available to the litert backend \(.*Failed to load delegate") as info:
        LandmarkSession(artifacts["litert"], device="gpu")
    assert "\n" not in str(info.value) and str(info.value).endswith("present: gpu, cpu")
    with LandmarkSession(artifacts["litert"], device="auto") as session:  # auto tries the GPU, then moves on
        assert session.device == "cpu"


# ---- threads --------------------------------------------------------------------------------------------


def test_instance_pool_reuses_and_bounds():
    made = []
    pool = InstancePool(lambda: made.append(object()) or made[-1])
    with pool.take() as a:
        with pool.take() as b:
            assert a is not b
    with pool.take() as c:
        assert c in (a, b)
    assert pool.size == 2 and len(made) == 2
    limited = InstancePool(object, limit=1)
    with limited.take():
        waiter = threading.Thread(target=lambda: limited.take().__enter__())
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # blocked until the instance is returned
    waiter.join(5)
    assert not waiter.is_alive() and limited.size == 1


def _calls(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Different image and boxes per call, so that a call that got another call's tensors would show."""
    rng = np.random.default_rng(11)
    calls = []
    for i in range(n):
        image = rng.integers(0, 256, (96 + i % 7, 120, 3), dtype=np.uint8)
        x, y = rng.uniform(0, 40, 2)
        boxes = np.array([[x, y, x + 50 + i % 13, y + 55], [10, 20, 90, 80]])[: 1 + i % 2]
        calls.append((image, boxes))
    return calls


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_eight_threads_give_the_sequential_results(artifacts, backend):
    calls = _calls(160)
    with LandmarkSession(artifacts[backend], backend=backend, threads=1) as session:
        expected = [session.predict(image, boxes) for image, boxes in calls]
        results: list = [None] * len(calls)
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(k: int) -> None:
            try:
                barrier.wait()
                for i in range(k, len(calls), 8):
                    results[i] = session.predict(*calls[i])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for (points, scores), (exp_points, exp_scores) in zip(results, expected):
            np.testing.assert_array_equal(points, exp_points)
            np.testing.assert_array_equal(scores, exp_scores)
        # One engine object per call in flight at most, never one per call.
        assert 1 <= session.backend.engine_objects <= 8
