"""Start-up: a command imports only what it uses. ``--help`` loads no network library; ``predict`` (any backend)
never loads the ONNX exporter or matplotlib, whose imports cost seconds per run, and with ONNX Runtime (the CPU
default) and a warm cache no torch at all (issue 17).

Each case runs the command in a fresh interpreter and reads ``sys.modules`` after it, so a module imported by any
path of the command is seen, whatever imported it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Runs the CLI in-process (as the console script does), then writes the names of the loaded modules to a file:
# stdout belongs to the command.
RUN_AND_LIST_MODULES = """
import json, sys
from cxrscreen.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""
EXPORTER = "torch.onnx._internal"


def loaded_modules(tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, str(out), *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=600)
    assert out.is_file(), done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["code"] in (0, None), done.stderr[-2000:]
    return result["modules"]


def under(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


@pytest.mark.parametrize("command", [["--help"], ["predict", "--help"], ["segment", "--help"], ["data", "split", "--help"]])
def test_help_loads_no_network_library_nor_image_code(tmp_path, command):
    # The parser takes its defaults from light modules (cxrscreen.data.defaults, cxrscreen.inference.options);
    # numpy, Pillow and tqdm alone used to be two thirds of --help's time.
    modules = loaded_modules(tmp_path, *command)
    for package in ("torch", "onnxruntime", "onnx", "monai", "matplotlib", "scipy", "skimage", "cv2", "numpy", "PIL",
                    "tqdm"):
        assert not under(modules, package), f"{' '.join(command)} imported {package}"
    assert "cxrscreen.cli.predict" in modules  # every command's parser was built


@pytest.mark.parametrize("backend", ["torch", "onnx", "auto"])
def test_predict_loads_neither_the_onnx_exporter_nor_matplotlib(tmp_path, real_xrays, backend):
    # Exports (classifier, segmenter, guard) are made on first use into the cache: make them before the measured
    # run, as a user's second run finds them.
    loaded_modules(tmp_path, "predict", str(real_xrays[0]), "--backend", backend, "--format", "csv")
    modules = loaded_modules(tmp_path, "predict", *map(str, real_xrays[:3]), "--backend", backend, "--format", "csv")
    assert "cxrscreen.inference.predictor" in modules  # the command did predict
    assert not under(modules, EXPORTER), f"predict --backend {backend} imported the ONNX exporter"
    assert not under(modules, "matplotlib"), f"predict --backend {backend} imported matplotlib"
    assert not under(modules, "skimage"), f"predict --backend {backend} imported scikit-image"
    if backend != "torch":  # ONNX Runtime, the bundle and the segmenter found in the cache: no torch at all
        assert not under(modules, "torch"), f"predict --backend {backend} imported torch"


# Loads the default model with the default backend, predicts one X-ray, and writes the answer and the loaded modules.
LOAD_PREDICT_AND_LIST_MODULES = """
import json, sys
from cxrscreen import load_model
model = load_model()
seen = []
run = model.backend.run

def recording(batch):  # the libraries' threads while the network runs
    from threadpoolctl import threadpool_info
    import cv2
    seen.append(([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"], cv2.getNumThreads()))
    return run(batch)

model.backend.run = recording
result = model.predict(sys.argv[2])
with open(sys.argv[1], "w") as fh:
    json.dump({"backend": model.backend_name, "result": result.to_dict(), "modules": sorted(sys.modules),
               "blas_threads": seen[0][0], "opencv_threads": seen[0][1]}, fh)
"""
HEAVY = ("torch", "monai", "matplotlib", "sklearn", "skimage", "scipy", "onnx")


def load_and_predict(tmp_path: Path, cache: Path, image: Path) -> tuple[dict, str]:
    out = tmp_path / "answer.json"
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", LOAD_PREDICT_AND_LIST_MODULES, str(out), str(image)],
                          capture_output=True, text=True, env={**os.environ, "CXRSCREEN_CACHE": str(cache)}, timeout=600)
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return json.loads(out.read_text()), done.stderr


def test_default_model_on_the_cpu_predicts_without_torch_once_cached(tmp_path, bundled_predictors, radiography_root):
    """``load_model()`` on a CPU runs ONNX Runtime; once its bundle is cached, a new process loads and predicts
    without importing torch or any other heavy library, and gives the torch backend's answer."""
    image = radiography_root / "COVID" / "images" / "COVID-1.jpg"
    cache = tmp_path / "cache"
    first, said = load_and_predict(tmp_path, cache, image)  # the warm-up: prepares the bundle once
    assert "for ONNX Runtime once" in said and str(cache) in said
    second, said = load_and_predict(tmp_path, cache, image)
    assert "for ONNX Runtime once" not in said
    assert second["backend"] == "onnx"
    loaded = [package for package in HEAVY if under(second["modules"], package)]
    assert not loaded, f"load_model().predict imported {loaded} with a warm cache"
    assert "onnxruntime" in second["modules"]
    # Workers run side by side; the libraries' own thread pools would wait for each other (options.single_threaded_libraries).
    assert second["blas_threads"] and set(second["blas_threads"]) == {1} and second["opencv_threads"] == 1
    expected = bundled_predictors["torch"].predict(image)
    for answer in (first["result"], second["result"]):
        assert answer["label"] == expected.label and answer["lungs_found"] == expected.lungs_found
        # The parity tolerance of tests/inference/test_onnx_parity.py: log-probabilities within 2e-3.
        log_probs = np.log([answer["probabilities"][c] for c in expected.probabilities])
        np.testing.assert_allclose(log_probs, np.log(list(expected.probabilities.values())), atol=2e-3)
        assert answer["ood_score"] == pytest.approx(expected.ood_score, rel=1e-4)
