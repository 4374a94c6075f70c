"""The Predictor contract on real X-rays: one result per input, temperature, OOD wiring, model paths."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxrscreen
from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.transforms import CallableLungFinder, Preprocessing, prepare_from_source
from cxrscreen.errors import ConfigError, ImageDecodeError, ModelError
from cxrscreen.inference import predictor as predictor_module
from cxrscreen.inference.predictor import (
    OUT_OF_DISTRIBUTION_LABEL,
    Prediction,
    PredictionFailure,
    load_predictor,
)
from cxrscreen.models.checkpoint import load_checkpoint

CLASSES = ["covid", "normal", "viral"]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path):
    return load_predictor(tiny_checkpoint)


def test_predict_real_image(predictor, real_xrays: list[Path]) -> None:
    result = predictor.predict(real_xrays[0])
    assert isinstance(result, Prediction)
    assert result.source == str(real_xrays[0])
    assert list(result.probabilities) == CLASSES
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.in_distribution is True and result.ood_score is None
    data = result.to_dict()
    assert data["notice"] == SCREENING_NOTICE
    assert data["label"] == result.label and data["probabilities"] == result.probabilities


def test_probabilities_are_the_models_tempered_softmax(tmp_path: Path, real_xrays: list[Path], checkpoint_factory) -> None:
    path = checkpoint_factory(tmp_path / "t.pt", temperature=2.5)
    model, meta = load_checkpoint(path)
    image = prepare_from_source(real_xrays[3], meta.preprocessing)
    with torch.no_grad():
        logits = model(torch.from_numpy(image)[None, None])[0].double()
    expected = torch.softmax(logits / 2.5, dim=0).numpy()
    got = load_predictor(path, backend="torch").predict(real_xrays[3]).probabilities
    np.testing.assert_allclose([got[c] for c in CLASSES], expected, atol=1e-5)
    # Not a vacuous check: without the temperature the answer differs.
    assert not np.allclose(expected, torch.softmax(logits, dim=0).numpy(), atol=1e-3)


def test_every_source_kind_gives_the_same_answer(predictor, real_xrays: list[Path]) -> None:
    path = real_xrays[6]  # ieee8023 image: not square, not 224 px
    data = path.read_bytes()
    sources = [str(path), path, data, Image.open(io.BytesIO(data)), load_xray(path)]
    results = predictor.predict_batch(sources)
    reference = results[0].probabilities
    for result in results[1:]:
        assert isinstance(result, Prediction)
        np.testing.assert_allclose(list(result.probabilities.values()), list(reference.values()), atol=1e-5)
    assert [r.source for r in results[2:]] == ["<upload>", "<image>", "<array>"]
    assert predictor.predict(data, name="upload.jpg").source == "upload.jpg"


def test_batch_keeps_going_past_bad_inputs(predictor, real_xrays: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real_xrays[0].read_bytes()[:2000])
    missing = tmp_path / "missing.png"
    sources = [real_xrays[0], empty, text, real_xrays[1], truncated, missing, real_xrays[2]]
    results = predictor.predict_batch(sources)
    assert len(results) == len(sources)
    failures = {r.source: r.reason for r in results if isinstance(r, PredictionFailure)}
    assert set(failures) == {str(empty), str(text), str(truncated), str(missing)}
    assert "empty" in failures[str(empty)]
    assert "truncated" in failures[str(truncated)]
    assert "not found" in failures[str(missing)]
    assert all(not reason.startswith(str(tmp_path)) for reason in failures.values())
    for index in (0, 3, 6):
        alone = predictor.predict(sources[index])
        assert results[index].probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    with pytest.raises(ImageDecodeError, match="^" + str(truncated)):
        predictor.predict(truncated)


def test_predict_batch_is_chunked_without_changing_results(tiny_checkpoint: Path, real_xrays: list[Path]) -> None:
    whole = load_predictor(tiny_checkpoint, batch_size=32).predict_batch(real_xrays)
    chunked = load_predictor(tiny_checkpoint, batch_size=3).predict_batch(real_xrays)
    for a, b in zip(whole, chunked):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    spread = np.ptp([list(r.probabilities.values()) for r in whole], axis=0)
    assert spread.max() > 0.05  # the images get different answers, so the comparison above means something


def test_predict_iter_streams_the_results_while_the_workers_go_on(
    tiny_checkpoint: Path, real_xrays: list[Path], tmp_path: Path
) -> None:
    """The folder command's path: the same results as predict_batch, in order (a bad file among them), and the
    workers prepare every batch without waiting for the caller to take the results of the first."""
    import time

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    sources = [*real_xrays[:3], bad, *real_xrays[3:]]
    predictor = load_predictor(tiny_checkpoint, batch_size=2, threads=2)
    expected = predictor.predict_batch(sources)
    prepared: list[int] = []
    prepare = predictor.prepare_sources

    def counting(batch_sources, names):
        prepared.append(len(batch_sources))
        return prepare(batch_sources, names)

    predictor.prepare_sources = counting
    results = predictor.predict_iter(sources)
    first = next(results)
    deadline = time.monotonic() + 30
    while sum(prepared) < len(sources) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(prepared) == len(sources)  # all 5 batches, while the caller held the first result only
    assert [first, *results] == expected
    assert isinstance(expected[3], PredictionFailure) and expected[3].source == str(bad)


def test_predict_prepared_matches_predict(predictor, real_xrays: list[Path]) -> None:
    images = np.stack([prepare_from_source(p, predictor.meta.preprocessing) for p in real_xrays[:4]])
    probs, features, guard_features = predictor.predict_prepared(images)
    assert probs.shape == (4, 3) and features.shape == (4, 1280) and guard_features is None
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for row, path in zip(probs, real_xrays[:4]):
        np.testing.assert_allclose(row, list(predictor.predict(path).probabilities.values()), atol=1e-5)
    with pytest.raises(ConfigError, match="expected shape"):
        predictor.predict_prepared(images[:, :32, :32])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predictor.predict_prepared(images * 255.0)


@pytest.mark.parametrize("guard_input", ["whole_image", "penultimate"])
def test_ood_guard_relabels_rejected_images(
    guard_input: str, tmp_path: Path, radiography_root: Path, tiny_checkpoint: Path, checkpoint_factory
) -> None:
    """A guard fitted on real X-rays' features, stored in the model: noise and a photograph get the OOD label,
    real X-rays mostly pass, and torch and ONNX Runtime agree on the scores. Guards on the penultimate features
    (format version 1, before the guard features existed) still work."""
    from skimage import data as skimage_data

    from cxrscreen.guard.ppca import fit_ood_guard
    from cxrscreen.guard.inputs import GUARD_NETWORK, guard_thumbnails
    from cxrscreen.guard.network import torch_guard_features

    files = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))
    plain = load_predictor(tiny_checkpoint)
    pp = plain.meta.preprocessing
    if guard_input == "whole_image":
        real_features = torch_guard_features(guard_thumbnails(files[:60])[0])
    else:
        real_features = plain.predict_prepared(np.stack([prepare_from_source(p, pp) for p in files[:60]])).features
    guard = fit_ood_guard(real_features, features=guard_input,
                          network=GUARD_NETWORK if guard_input == "whole_image" else None)
    if guard_input == "penultimate":  # as written by cxrscreen before the whole-image guard
        del guard["features"]
        guard["version"] = 1
    guarded_path = checkpoint_factory(tmp_path / "guarded.pt", ood=guard)
    noise = np.random.default_rng(0).random((300, 300)).astype(np.float32)
    photo = skimage_data.astronaut()  # RGB uint8 photograph
    sources = [*files[60:66], noise, photo]
    for backend in ("torch", "onnx"):
        results = load_predictor(guarded_path, backend=backend).predict_batch(sources)
        for result in results:
            assert result.in_distribution == (result.ood_score <= guard["threshold"])
            assert (result.label == OUT_OF_DISTRIBUTION_LABEL) == (not result.in_distribution)
            assert sum(result.probabilities.values()) == pytest.approx(1.0)
        assert [r.in_distribution for r in results[-2:]] == [False, False]
        assert sum(r.in_distribution for r in results[:6]) >= 4
        if backend == "torch":
            torch_scores = [r.ood_score for r in results]
    np.testing.assert_allclose([r.ood_score for r in results], torch_scores, rtol=1e-3)


def test_a_broken_guard_is_refused_at_load(tmp_path: Path, checkpoint_factory) -> None:
    path = checkpoint_factory(tmp_path / "broken.pt", ood={"method": "ppca-mahalanobis"})
    with pytest.raises(ModelError, match=f"^{path}: OOD guard: missing"):
        load_predictor(path)


def test_model_paths(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    assert load_predictor(run_dir).model_path == run_dir / "best.pt"
    with pytest.raises(ModelError, match="no best.pt"):
        load_predictor(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_predictor(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="^" + str(junk)):
        load_predictor(junk)
    with pytest.raises(ConfigError, match="--backend"):
        load_predictor(tiny_checkpoint, backend="tensorrt")
    monkeypatch.setattr(predictor_module, "DEFAULT_MODEL", tmp_path / "absent" / "default.pt")
    with pytest.raises(ModelError, match="no bundled model found"):
        cxrscreen.load_model()


def held_out_images(folder: Path, train_hashes: list[str], max_distance: float, n: int) -> list[Path]:
    """The last ``n`` images of ``folder`` (sorted by name) with no near-duplicate among a model's training images."""
    from cxrscreen.data.dedup import hash_files, min_distances

    files = sorted(folder.glob("*.jpg"))[-12 * n :]
    hashes = hash_files(files).hashes
    distances = min_distances([hashes[str(f)] for f in files], train_hashes)
    return [f for f, d in zip(files, distances) if d > max_distance][-n:]


def test_bundled_model_on_real_cases_it_was_not_trained_on(bundled_predictors, radiography_root: Path) -> None:
    """Four images of each class from outside the bundled model's training split (no near-duplicate among the
    pHashes it records, ``meta.train_hashes``, at its split's distance); it must get nearly all of them."""
    predictor = bundled_predictors["torch"]
    meta = predictor.meta
    max_distance = meta.config["dedup_distance"]
    folders = {"covid": "COVID", "normal": "Normal", "viral": "Viral Pneumonia"}
    cases = [
        (cls, path)
        for cls, folder in folders.items()
        for path in held_out_images(radiography_root / folder / "images", meta.train_hashes, max_distance, 4)
    ]
    assert len(cases) == 12 and len(meta.train_hashes) == sum(meta.train_summary["images_per_split"]["train"].values())
    from cxrscreen.data.dedup import hash_files

    # Checked without the distance code that chose them: not one is a training image itself.
    assert not set(hash_files([p for _, p in cases]).hashes.values()) & set(meta.train_hashes)
    results = predictor.predict_batch([p for _, p in cases])
    correct = sum(r.label == cls for (cls, _), r in zip(cases, results))
    assert correct >= len(cases) - 1, [(cls, r.label) for (cls, _), r in zip(cases, results)]


def reference_gradcam(checkpoint: Path, source: Path, target: str, shape: tuple[int, int]) -> np.ndarray:
    """Grad-CAM written out on the checkpoint's own network: the target logit's gradient at the Grad-CAM layer,
    averaged per channel, weights the activations; the ReLU of the sum, bilinearly resized straight to ``shape``
    (the predictor goes through the 64 px input first) and scaled to [0, 1]."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    captured: list[torch.Tensor] = []
    model.get_submodule(model.target_layer).register_forward_hook(lambda _m, _i, output: captured.append(output))
    logits = model(torch.from_numpy(prepare_from_source(source, meta.preprocessing))[None, None])
    (gradients,) = torch.autograd.grad(logits[0, meta.classes.index(target)], captured[-1])
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * captured[-1]).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=shape, mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_explain_real_xray(predictor, tiny_checkpoint: Path, real_xrays: list[Path]) -> None:
    path = real_xrays[6]  # not square: the heatmap must follow the image's own size
    original = load_xray(path)
    explanation = predictor.explain(path)
    assert explanation.target == predictor.predict(path).top_class
    assert explanation.heatmap.shape == original.shape and explanation.heatmap.dtype == np.float32
    assert explanation.heatmap.min() == pytest.approx(0.0, abs=1e-6) and explanation.heatmap.max() == pytest.approx(1.0, abs=1e-6)
    # The two resizing routes differ by about 0.01; a transposed, inverted or wrong-class map by far more.
    reference = reference_gradcam(tiny_checkpoint, path, explanation.target, original.shape)
    np.testing.assert_allclose(explanation.heatmap, reference, atol=0.03)
    with Image.open(io.BytesIO(explanation.overlay_png)) as overlay:
        assert overlay.format == "PNG" and overlay.size == (original.shape[1], original.shape[0])
    bare = predictor.explain(path, overlay=False)  # the DICOM node draws its own picture
    assert bare.overlay_png == b"" and np.array_equal(bare.heatmap, explanation.heatmap)
    others = [predictor.explain(path.read_bytes(), target=c) for c in CLASSES if c != explanation.target]
    assert all(o.target != explanation.target for o in others)
    assert max(np.abs(o.heatmap - explanation.heatmap).mean() for o in others) > 0.01
    with pytest.raises(ConfigError, match="--target 'flu'"):
        predictor.explain(path, target="flu")


class BoxSegmenter:
    """Stands in for the lung segmenter: 'finds' the lungs in a fixed box (fractions of the image)."""

    def __init__(self, box: tuple[float, float, float, float]):
        self.box = box

    def segment(self, image: np.ndarray):
        from cxrscreen.lungs.segmenter import LungSegmentation

        h, w = image.shape
        top, bottom, left, right = self.box
        mask = np.zeros(image.shape, dtype=bool)
        mask[int(top * h) : int(bottom * h), int(left * w) : int(right * w)] = True
        return LungSegmentation(mask=mask, plausible=True, area_fraction=float(mask.mean()))

    def plausible_masks(self, images):
        return [self.segment(image).mask for image in images]


def test_lung_crop_models_predict_and_explain_in_the_cropped_box(tmp_path: Path, real_xrays: list[Path], checkpoint_factory) -> None:
    pp = Preprocessing(img_size=64, lung_mode="crop", crop_margin=0.0)
    predictor = load_predictor(checkpoint_factory(tmp_path / "crop.pt", pp=pp))
    predictor.lungs = CallableLungFinder(BoxSegmenter((0.25, 0.75, 0.5, 1.0)).plausible_masks, "box")
    result = predictor.predict(real_xrays[0])
    assert result.lungs_found is True
    # The network saw only the box: same answer as for the box cut out by hand.
    original = load_xray(real_xrays[0])
    h, w = original.shape
    cut = original[h // 4 : 3 * h // 4, w // 2 :]
    plain = load_predictor(tmp_path / "crop.pt")
    plain.meta.preprocessing = Preprocessing(img_size=64)
    assert result.probabilities == pytest.approx(plain.predict(cut).probabilities, abs=1e-5)
    outside = np.ones(original.shape, dtype=bool)
    outside[h // 4 : 3 * h // 4, w // 2 :] = False
    # At 64 px the last feature map is 2 x 2 and a random head may have no positive evidence for a class: look
    # at all three; every map must stay inside the box, and some map must be hot there.
    heatmaps = [predictor.explain(real_xrays[0], target=c).heatmap for c in CLASSES]
    assert all(m.shape == original.shape and m[outside].max() == 0.0 for m in heatmaps)
    assert max(m[~outside].max() for m in heatmaps) > 0.5
