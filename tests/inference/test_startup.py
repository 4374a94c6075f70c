"""Start-up: a command imports only what it uses. ``--help`` loads no network library; ``predict`` (either
backend) never loads the ONNX exporter or matplotlib, whose imports cost seconds per run (issue 17).

Each case runs the command in a fresh interpreter and reads ``sys.modules`` after it, so a module imported by any
path of the command is seen, whatever imported it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_help_loads_no_network_library_nor_plotting(tmp_path):
    modules = loaded_modules(tmp_path, "--help")
    for package in ("torch", "onnxruntime", "onnx", "monai", "matplotlib", "scipy", "skimage", "cv2"):
        assert not under(modules, package), f"--help imported {package}"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_loads_neither_the_onnx_exporter_nor_matplotlib(tmp_path, real_xrays, backend):
    # Exports (classifier, segmenter, guard) are made on first use into the cache: make them before the measured
    # run, as a user's second run finds them.
    loaded_modules(tmp_path, "predict", str(real_xrays[0]), "--backend", backend, "--format", "csv")
    modules = loaded_modules(tmp_path, "predict", *map(str, real_xrays[:3]), "--backend", backend, "--format", "csv")
    assert "cxrscreen.inference.predictor" in modules  # the command did predict
    assert not under(modules, EXPORTER), f"predict --backend {backend} imported the ONNX exporter"
    assert not under(modules, "matplotlib"), f"predict --backend {backend} imported matplotlib"
    assert not under(modules, "skimage"), f"predict --backend {backend} imported scikit-image"
