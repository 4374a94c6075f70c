"""The Python API's inference options: device, threads, decision thresholds, lists, known limits."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import cxrscreen
from cxrscreen.errors import ConfigError, CxrError
from cxrscreen.inference import parse_thresholds
from cxrscreen.inference.predictor import Prediction, decide, default_threads, load_predictor

CLASSES = ["covid", "normal", "viral"]


def test_load_model_and_load_predictor_take_device_threads_thresholds():
    expected = {"path": None, "backend": "auto", "device": "auto", "threads": None, "thresholds": None}
    model_params = inspect.signature(cxrscreen.load_model).parameters
    assert {name: p.default for name, p in model_params.items()} == expected
    predictor_params = inspect.signature(load_predictor).parameters
    assert all(predictor_params[name].default == default for name, default in expected.items())


def test_parse_thresholds_reads_class_equals_probability():
    assert parse_thresholds(["covid=0.3", "viral = 0.75"]) == {"covid": 0.3, "viral": 0.75}
    assert parse_thresholds([]) == {}
    for bad in (["covid"], ["covid=high"], ["covid=1.5"], ["=0.2"], ["covid=0.2", "covid=0.4"]):
        with pytest.raises(ConfigError, match="--threshold"):
            parse_thresholds(bad)


@pytest.mark.parametrize(
    ("probs", "thresholds", "expected"),
    [
        ([0.2, 0.5, 0.3], {}, "normal"),  # no thresholds: argmax
        ([0.35, 0.45, 0.2], {"covid": 0.3}, "covid"),  # covid passes its threshold and wins
        ([0.25, 0.30, 0.45], {"covid": 0.3}, "viral"),  # covid below: argmax of the rest
        ([0.45, 0.35, 0.2], {"covid": 0.5}, "normal"),  # the most probable class does not pass: the rest decide
        ([0.35, 0.05, 0.6], {"covid": 0.3, "viral": 0.5}, "viral"),  # both pass: the more probable wins
        ([0.2, 0.5, 0.3], {"covid": 0.9, "normal": 0.9, "viral": 0.9}, "normal"),  # none passes, all have one
    ],
)
def test_decision_rule(probs, thresholds, expected):
    assert CLASSES[decide(np.array(probs), CLASSES, thresholds)] == expected


def test_thresholds_decide_the_label_and_default_to_the_models_operating_point(checkpoint_factory, tmp_path, real_xrays):
    plain = load_predictor(checkpoint_factory(tmp_path / "plain.pt"), device="cpu", threads=1)
    result = plain.predict(real_xrays[0])
    assert result.label == result.top_class
    other = next(c for c in CLASSES if c != result.top_class)
    stored = load_predictor(checkpoint_factory(tmp_path / "op.pt", thresholds={other: 0.0}), device="cpu", threads=1)
    assert stored.thresholds == {other: 0.0}
    assert stored.predict(real_xrays[0]).label == other
    overridden = load_predictor(tmp_path / "op.pt", device="cpu", threads=1, thresholds={})
    assert overridden.predict(real_xrays[0]).label == result.top_class
    with pytest.raises(ConfigError, match="flu"):
        load_predictor(tmp_path / "op.pt", device="cpu", thresholds={"flu": 0.5})


def test_predict_of_a_list_gives_a_list(tiny_checkpoint, real_xrays):
    predictor = load_predictor(tiny_checkpoint, device="cpu", threads=1)
    results = predictor.predict([real_xrays[0], real_xrays[1]])
    assert isinstance(results, list) and len(results) == 2
    assert [r.to_dict() for r in results] == [r.to_dict() for r in predictor.predict_batch(real_xrays[:2])]
    assert isinstance(predictor.predict(real_xrays[0]), Prediction)


def test_known_limits_travel_from_the_checkpoint_into_every_result(checkpoint_factory, tmp_path, real_xrays):
    limits = ["Healthy children's X-rays are often called viral pneumonia."]
    predictor = load_predictor(checkpoint_factory(tmp_path / "limits.pt", known_limits=limits), device="cpu", threads=1)
    assert predictor.known_limits == limits
    assert predictor.predict(real_xrays[0]).to_dict()["known_limits"] == limits
    plain = load_predictor(checkpoint_factory(tmp_path / "none.pt"), device="cpu", threads=1)
    assert plain.predict(real_xrays[0]).to_dict()["known_limits"] == []


def test_bundled_model_states_its_known_limits():
    from cxrscreen.inference.predictor import DEFAULT_MODEL
    from cxrscreen.models.checkpoint import read_checkpoint

    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled default model not trained yet")
    limits = read_checkpoint(DEFAULT_MODEL)["meta"].get("known_limits", [])
    assert any("Kermany" in line or "children" in line for line in limits)
    assert any("tuberculosis" in line.lower() for line in limits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_is_refused_where_there_is_none(tiny_checkpoint):
    with pytest.raises(CxrError, match="--device cuda"):
        load_predictor(tiny_checkpoint, device="cuda")
    assert load_predictor(tiny_checkpoint, device="auto", threads=1).device == "cpu"


def test_auto_backend_is_onnx_runtime_on_the_cpu_and_torch_on_a_gpu(monkeypatch):
    from cxrscreen.inference import options

    checkpoint, exported = Path("model.pt"), Path("model.onnx")
    asked_torch = []
    monkeypatch.setattr(options, "resolve_device", lambda device, backend: asked_torch.append(device) or "cuda")
    monkeypatch.setattr(options, "nvidia_gpu_present", lambda: False)
    assert options.resolve_backend("auto", "auto", checkpoint) == "onnx"
    assert not asked_torch  # no NVIDIA device: torch is not even imported to ask
    assert options.resolve_backend("auto", "cpu", checkpoint) == "onnx"
    assert options.resolve_backend("auto", "cuda", checkpoint) == "torch"
    assert options.resolve_backend("auto", "cpu", exported) == "onnx"
    monkeypatch.setattr(options, "nvidia_gpu_present", lambda: True)
    assert options.resolve_backend("auto", "auto", checkpoint) == "torch" and asked_torch == ["auto"]
    monkeypatch.setattr(options, "resolve_device", lambda device, backend: "cpu")  # a GPU torch cannot use
    assert options.resolve_backend("auto", "auto", checkpoint) == "onnx"
    assert [options.resolve_backend(b, "cuda", checkpoint) for b in ("torch", "onnx")] == ["torch", "onnx"]
    with pytest.raises(ConfigError, match="--backend"):
        options.resolve_backend("tensorrt", "cpu", checkpoint)


def test_onnx_backend_runs_on_the_cpu_only(tiny_checkpoint):
    with pytest.raises(CxrError, match="onnx"):
        load_predictor(tiny_checkpoint, backend="onnx", device="cuda")
    with pytest.raises(ConfigError, match="--device"):
        load_predictor(tiny_checkpoint, device="tpu")


def test_default_threads_are_workers_over_the_cpus_whatever_the_load(tiny_checkpoint, monkeypatch):
    """Workers, each with single-threaded networks, one per usable CPU (at most 4), not fewer because the load
    average is high: it lags, and counted the benchmark's own previous process as a busy CPU."""
    from cxrscreen import threads
    from cxrscreen.inference import options

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    monkeypatch.setattr(options, "available_cpus", lambda: 2)
    assert default_threads() == 2
    monkeypatch.setattr(options, "available_cpus", lambda: 16)
    assert default_threads() == 4
    predictor = load_predictor(tiny_checkpoint, backend="torch", device="cpu")
    assert predictor.threads == 4 and predictor.workers == 4
    assert load_predictor(tiny_checkpoint, device="cpu", threads=2).threads == 2
    with pytest.raises(ConfigError, match="--threads"):
        load_predictor(tiny_checkpoint, threads=0)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_predictors_single_threaded_libraries_stay_in_its_own_work(tiny_checkpoint, real_xrays, backend):
    """Issue 26: the networks and libraries are single-threaded while the predictor works (its workers run side by
    side), and the process gets its settings back afterwards: `adapt` loads its parent's predictor, then trains."""
    import cv2
    from threadpoolctl import threadpool_info, threadpool_limits

    def settings() -> tuple:
        blas = tuple(sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}))
        return torch.get_num_threads(), cv2.getNumThreads(), blas

    previous = torch.get_num_threads(), cv2.getNumThreads()
    with threadpool_limits(limits=3, user_api="blas"):
        try:
            torch.set_num_threads(3)
            cv2.setNumThreads(3)
            predictor = load_predictor(tiny_checkpoint, backend=backend, device="cpu", threads=2)
            assert settings() == (3, 3, (3,))  # loading changes nothing
            during = []
            run = predictor.backend.run
            predictor.backend.run = lambda batch: during.append(settings()) or run(batch)
            predictor.predict(real_xrays[0])
            predictor.predict_batch(real_xrays[:4])
            predictor.predict_prepared(np.zeros((2, predictor.img_size, predictor.img_size), np.float32))
            assert len(during) >= 4 and set(during) == {(1, 1, (1,))}
            assert settings() == (3, 3, (3,))
        finally:
            torch.set_num_threads(previous[0])
            cv2.setNumThreads(previous[1])
