"""``cxrscreen predict / explain / export`` end to end on real X-rays, through cxrscreen.cli.main."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen import SCREENING_NOTICE
from cxrscreen.cli import main

CLASSES = ["covid", "normal", "viral"]


@pytest.fixture
def image_dir(tmp_path: Path, real_xrays: list[Path]) -> Path:
    """A folder with four real X-rays, one in a subfolder (recursion)."""
    folder = tmp_path / "xrays"
    (folder / "sub").mkdir(parents=True)
    for path in real_xrays[:3]:
        (folder / path.name).symlink_to(path)
    (folder / "sub" / real_xrays[6].name).symlink_to(real_xrays[6])
    return folder


@pytest.fixture
def bad_files(tmp_path: Path, real_xrays: list[Path]) -> dict[str, Path]:
    bad = tmp_path / "bad"
    bad.mkdir()
    files = {
        "empty": bad / "empty.png",
        "text": bad / "readme.png",
        "truncated": bad / "cut.jpg",
        "missing": bad / "missing.jpg",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is text, not a PNG\n")
    files["truncated"].write_bytes(real_xrays[1].read_bytes()[:1500])
    return files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_schema(capsys, tiny_checkpoint: Path, image_dir: Path) -> None:
    code, out, err = run(capsys, "predict", str(image_dir), "--model", str(tiny_checkpoint), "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", "p_covid", "p_normal", "p_viral", "rule", "cutoff", "most_probable"]
    assert len(rows) == 1 + 4
    assert {Path(r[0]).name for r in rows[1:]} == {p.name for p in image_dir.rglob("*.jpg")}
    for row in rows[1:]:
        probs = [float(x) for x in row[2:5]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert row[1] == row[7] == CLASSES[int(np.argmax(probs))]
        assert row[5:7] == ["most_probable", ""]  # the tiny model stores no threshold


def test_json_schema_and_batch_size(capsys, tiny_checkpoint: Path, image_dir: Path) -> None:
    code, out, _ = run(capsys, "predict", str(image_dir), "--model", str(tiny_checkpoint), "--format", "json", "--batch-size", "3")
    assert code == 0
    data = json.loads(out)
    assert data["notice"] == SCREENING_NOTICE
    assert len(data["predictions"]) == 4
    for item in data["predictions"]:
        assert set(item) == {"path", "label", "probabilities", "in_distribution", "ood_score", "lungs_found", "known_limits",
                             "decision"}
        assert item["decision"]["rule"] == "most_probable" and item["decision"]["label"] == item["label"]
        assert list(item["probabilities"]) == CLASSES
        assert sum(item["probabilities"].values()) == pytest.approx(1.0)
        assert item["label"] in CLASSES and item["in_distribution"] is True


def test_a_table_with_unreadable_files_keeps_stdout_for_results(capsys, tiny_checkpoint: Path, real_xrays, bad_files) -> None:
    code, out, err = run(capsys, "predict", str(bad_files["text"]), str(real_xrays[0]), "--model", str(tiny_checkpoint))
    assert code == 1
    assert err.strip().splitlines()[-1] == "1 file(s) could not be read (see above)."
    assert "could not be read" not in out and str(real_xrays[0]) in out


def test_table_has_the_screening_footer(capsys, tiny_checkpoint: Path, real_xrays: list[Path]) -> None:
    code, out, _ = run(capsys, "predict", str(real_xrays[0]), "--model", str(tiny_checkpoint))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["label", "p_covid", "p_normal", "p_viral", "rule", "path"]
    label, *probs, path = lines[1].replace("most probable", "").split(maxsplit=4)
    assert path == str(real_xrays[0]) and label in CLASSES
    assert sum(map(float, probs)) == pytest.approx(1.0, abs=2e-3)
    assert lines[-1] == SCREENING_NOTICE


def test_bad_files_one_line_each_others_still_predicted(
    capsys, tiny_checkpoint: Path, image_dir: Path, bad_files: dict[str, Path]
) -> None:
    paths = [str(image_dir), *map(str, bad_files.values())]
    code, out, err = run(capsys, "predict", *paths, "--model", str(tiny_checkpoint), "--format", "csv")
    assert code == 1
    assert len(out.strip().splitlines()) == 1 + 4
    err_lines = err.strip().splitlines()
    assert len(err_lines) == len(bad_files)
    for kind, path in bad_files.items():
        (line,) = [l for l in err_lines if l.startswith(f"{path}: ")]
        assert {"empty": "empty", "text": "not", "truncated": "truncated", "missing": "not found"}[kind] in line
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_nothing_predicted_is_a_user_mistake(capsys, tiny_checkpoint: Path, bad_files, fmt: str, kind: str) -> None:
    """README: user mistakes exit 2, 1 is for files that failed in a batch. No empty table, CSV header or JSON."""
    code, out, err = run(capsys, "predict", str(bad_files[kind]), "--model", str(tiny_checkpoint), "--format", fmt)
    assert code == 2
    assert out == ""
    assert err.strip() == f"{bad_files[kind]}: {'file not found' if kind == 'missing' else 'empty file'}"


def test_explain_and_segment_of_only_a_missing_file_exit_2(capsys, tiny_checkpoint: Path, bad_files, tmp_path: Path) -> None:
    missing = str(bad_files["missing"])
    for argv in (["explain", missing, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "cams")],
                 ["segment", missing, "--out", str(tmp_path / "lungs")]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert err.strip() == f"{missing}: file not found"


def test_a_folder_of_dicoms_without_extensions(capsys, tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path) -> None:
    """PACS exports name files IM000001: predict, explain and segment read them from a folder, and say what they skipped."""
    from badinputs.corpus import dicom_bytes, make_dicom

    folder = tmp_path / "pacs"
    for series, xray in (("SE1", real_xrays[0]), ("SE2", real_xrays[3])):
        (folder / series).mkdir(parents=True)
        with Image.open(xray) as image:
            pixels = np.asarray(image.convert("L"))
        (folder / series / "IM000001").write_bytes(dicom_bytes(make_dicom(pixels)))
    (folder / "README").write_text("export notes\n")
    skipped = f"{folder}: skipped 1 file(s) that are not PNG, JPEG or DICOM"

    code, out, err = run(capsys, "predict", str(folder), "--model", str(tiny_checkpoint), "--format", "csv")
    assert code == 0, err
    assert [row[0] for row in csv.reader(io.StringIO(out))][1:] == [str(folder / s / "IM000001") for s in ("SE1", "SE2")]
    assert err.strip() == skipped

    code, out, err = run(capsys, "explain", str(folder), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "cams"))
    assert code == 0 and err.strip() == skipped
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["IM000001-2_gradcam.png", "IM000001_gradcam.png"]

    code, out, err = run(capsys, "segment", str(folder), "--out", str(tmp_path / "lungs"))
    assert code == 0 and err.strip() == skipped
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(folder / s / "IM000001") for s in ("SE1", "SE2")]
    assert {p.name for p in (tmp_path / "lungs").iterdir()} == {
        "IM000001_lungs.png", "IM000001_lungs_overlay.png", "IM000001-2_lungs.png", "IM000001-2_lungs_overlay.png"}


def test_predict_with_explain_writes_overlays(capsys, tiny_checkpoint: Path, image_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "cams"
    code, _, err = run(capsys, "predict", str(image_dir), "--model", str(tiny_checkpoint), "--explain", str(out_dir), "--target", "viral")
    assert code == 0, err
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted(f"{p.stem}_gradcam.png" for p in image_dir.rglob("*.jpg"))
    source = next(image_dir.rglob("*.jpg"))
    with Image.open(out_dir / f"{source.stem}_gradcam.png") as overlay, Image.open(source) as original:
        assert overlay.mode == "RGB" and overlay.size == original.size


def test_explain_command(capsys, tiny_checkpoint: Path, real_xrays: list[Path], bad_files, tmp_path: Path) -> None:
    out_dir = tmp_path / "cams"
    xray = real_xrays[6]
    code, out, err = run(capsys, "explain", str(xray), str(bad_files["text"]), "--model", str(tiny_checkpoint), "--out", str(out_dir), "--save-array")
    assert code == 1
    assert err.strip().startswith(f"{bad_files['text']}: ")
    assert out.strip() == str(out_dir / f"{xray.stem}_gradcam.png")
    heatmap = np.load(out_dir / f"{xray.stem}_gradcam.npy")
    with Image.open(xray) as original:
        assert heatmap.shape == (original.height, original.width)
    assert heatmap.dtype == np.float32 and np.isfinite(heatmap).all() and 0 <= heatmap.min() < heatmap.max() <= 1


def test_unknown_target_is_a_one_line_error(capsys, tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path) -> None:
    code, _, err = run(capsys, "explain", str(real_xrays[0]), "--model", str(tiny_checkpoint), "--out", str(tmp_path), "--target", "flu")
    assert code == 2
    assert err.strip() == "cxrscreen: error: --target 'flu' is not one of the model's classes: covid, normal, viral"


def test_export_then_predict_with_onnx(capsys, tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    code, out, _ = run(capsys, "export", "--model", str(tiny_checkpoint), "--onnx", str(onnx_path))
    assert code == 0 and out.strip() == str(onnx_path) and onnx_path.stat().st_size > 1_000_000
    images = [str(p) for p in real_xrays[:3]]
    _, torch_out, _ = run(capsys, "predict", *images, "--model", str(tiny_checkpoint), "--format", "csv")
    for model in (str(onnx_path), str(tiny_checkpoint)):
        code, onnx_out, err = run(capsys, "predict", *images, "--model", model, "--backend", "onnx", "--format", "csv")
        assert code == 0, err
        torch_rows, onnx_rows = (list(csv.reader(io.StringIO(t)))[1:] for t in (torch_out, onnx_out))
        for t_row, o_row in zip(torch_rows, onnx_rows, strict=True):
            assert t_row[:2] == o_row[:2]
            np.testing.assert_allclose([float(x) for x in o_row[2:5]], [float(x) for x in t_row[2:5]], atol=1e-4)
            assert t_row[5:] == o_row[5:]


def test_bad_input_corpus_through_predict(capsys, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Every image case of the shared corpus: readable ones predicted, each broken one a single `path: reason`."""
    from badinputs.corpus import build_corpus

    cases = [c for c in build_corpus(tmp_path / "corpus") if c.target == "image"]
    code, out, err = run(capsys, "predict", *(str(c.path) for c in cases), "--model", str(tiny_checkpoint), "--format", "csv")
    assert code == 1
    predicted = [row[0] for row in csv.reader(io.StringIO(out))][1:]
    assert predicted == [str(c.path) for c in cases if c.expect == "ok"]
    err_lines = err.strip().splitlines()
    broken = [c for c in cases if c.expect == "error"]
    assert len(err_lines) == len(broken)
    for case, line in zip(broken, err_lines, strict=True):
        assert line.startswith(f"{case.path}: ") and case.reason_substring in line, (case.name, line)


def test_empty_folder_is_an_error(capsys, tiny_checkpoint: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "predict", str(tmp_path), "--model", str(tiny_checkpoint))
    assert code == 2 and out == ""
    assert err.strip() == f"cxrscreen: error: {tmp_path}: no PNG, JPEG or DICOM files found"


def test_export_of_a_lung_focused_model_writes_the_segmenter_too(capsys, tmp_path: Path, checkpoint_factory) -> None:
    import onnxruntime as ort

    from cxrscreen.data.transforms import Preprocessing

    model = checkpoint_factory(tmp_path / "lung.pt", pp=Preprocessing(img_size=64, lung_mode="crop_mask"))
    code, out, _ = run(capsys, "export", "--model", str(model), "--onnx", str(tmp_path / "m.onnx"))
    assert code == 0
    assert out.split() == [str(tmp_path / "m.onnx"), str(tmp_path / "m_lungs.onnx")]
    session = ort.InferenceSession(str(tmp_path / "m_lungs.onnx"), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1


def test_known_limits_footer_under_the_table_only(capsys, checkpoint_factory, real_xrays: list[Path], tmp_path: Path) -> None:
    limits = ["Calls many healthy children's X-rays viral pneumonia.", "Calls most adult TB X-rays COVID."]
    model = str(checkpoint_factory(tmp_path / "limited.pt", known_limits=limits))
    image = str(real_xrays[0])
    code, out, _ = run(capsys, "predict", image, "--model", model)
    assert code == 0
    assert out.strip().splitlines()[-3:] == [f"Known limit: {limit}" for limit in limits] + [SCREENING_NOTICE]
    _, out, _ = run(capsys, "predict", image, "--model", model, "--format", "csv")
    assert "Known limit" not in out and len(out.strip().splitlines()) == 2
    _, out, _ = run(capsys, "predict", image, "--model", model, "--format", "json")
    assert json.loads(out)["predictions"][0]["known_limits"] == limits


@pytest.mark.parametrize("forced", CLASSES)
def test_threshold_reaches_the_decision(capsys, tiny_checkpoint: Path, real_xrays: list[Path], forced: str) -> None:
    """A threshold of 0 is always passed, so that class is every image's label, in predict and in explain."""
    images = [str(p) for p in real_xrays[:4]]
    code, out, err = run(capsys, "predict", *images, "--model", str(tiny_checkpoint), "--format", "csv", "--threshold", f"{forced}=0")
    assert code == 0, err
    assert [row[1] for row in csv.reader(io.StringIO(out))][1:] == [forced] * 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "covid"], "--threshold 'covid': expected CLASS=P"),
        (["--threshold", "covid=1.5"], "--threshold 'covid=1.5': expected CLASS=P"),
        (["--threshold", "flu=0.3"], "--threshold flu: not one of the model's classes"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--device", "cuda", "--backend", "onnx"], "--device cuda: the onnx backend runs on the CPU"),
    ],
)
def test_bad_inference_flags_are_one_line_errors(capsys, tiny_checkpoint: Path, real_xrays: list[Path], argv, message) -> None:
    code, out, err = run(capsys, "predict", str(real_xrays[0]), "--model", str(tiny_checkpoint), *argv)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"cxrscreen: error: {message}"), err


def test_explain_takes_the_inference_flags(capsys, tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path) -> None:
    base = ["explain", str(real_xrays[0]), "--model", str(tiny_checkpoint), "--out", str(tmp_path)]
    code, _, err = run(capsys, *base, "--threshold", "flu=0.3")
    assert code == 2 and err.startswith("cxrscreen: error: --threshold flu: not one of the model's classes")
    code, out, err = run(capsys, *base, "--device", "cpu", "--threads", "1", "--threshold", "viral=0")
    assert code == 0, err
    assert out.strip() == str(tmp_path / f"{real_xrays[0].stem}_gradcam.png")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_progress_bar_only_on_a_terminal(capsys, monkeypatch, tiny_checkpoint: Path, image_dir: Path, tmp_path: Path, command: str) -> None:
    argv = [command, str(image_dir), "--model", str(tiny_checkpoint)]
    argv += ["--format", "csv"] if command == "predict" else ["--out", str(tmp_path / "cams")]
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""  # piped: no bar
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    code, out_tty, _ = run(capsys, *argv)
    assert code == 0
    assert f"{'predicting' if command == 'predict' else 'explaining'}:   0%|          | 0/4" in terminal.getvalue()
    assert out_tty == out  # the bar never reaches stdout


def test_predict_explain_without_target_explains_the_predicted_class_without_scoring_again(
    capsys, tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path, monkeypatch
) -> None:
    """`predict --explain` explains the class each row says, from that row's scores: no second classifier pass."""
    from cxrscreen.inference import predictor as predictor_module

    explained: list[str | None] = []
    original_explain = predictor_module.Predictor.explain

    def spy(self, source, target=None, name=None):
        explained.append(target)
        return original_explain(self, source, target, name)

    def scored_again(self, *args, **kwargs):
        raise AssertionError("explain scored the image again")

    monkeypatch.setattr(predictor_module.Predictor, "explain", spy)
    monkeypatch.setattr(predictor_module.Predictor, "predict_prepared", scored_again)
    images = real_xrays[:3]
    code, out, err = run(capsys, "predict", *map(str, images), "--model", str(tiny_checkpoint), "--format", "csv",
                         "--explain", str(tmp_path / "cams"))
    assert code == 0, err
    labels = [row["label"] for row in csv.DictReader(io.StringIO(out))]
    assert explained == labels and len(labels) == len(images)


def test_predict_hands_the_whole_folder_to_the_workers_at_once(
    capsys, tiny_checkpoint: Path, image_dir: Path, monkeypatch
) -> None:
    """The command streams one predict_iter over every file (the workers take batch after batch), rather than
    waiting at each --batch-size chunk for the slowest worker; rows still come in file order."""
    from cxrscreen.inference import predictor as predictor_module

    calls: list[int] = []
    original = predictor_module.Predictor.predict_iter

    def spy(self, sources, names=None):
        calls.append(len(sources))
        return original(self, sources, names)

    monkeypatch.setattr(predictor_module.Predictor, "predict_iter", spy)
    code, out, err = run(capsys, "predict", str(image_dir), "--model", str(tiny_checkpoint), "--format", "csv",
                         "--batch-size", "2")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert calls == [len(rows)] and len(rows) >= 3
    from cxrscreen.cli.batch import image_files

    assert [row["path"] for row in rows] == [str(path) for path in image_files([str(image_dir)])]
