"""Inference benchmark: what a user waits for, and where the time goes, on real X-rays.

    .venv/bin/python benchmarks/infer.py [--data DIR] [--images 512] [--repeats 3] [--latency-images 50]
        [--model FILE] [--json FILE]

Everything is measured in one run, so that the ratios hold on a shared, noisy machine (compare ratios, not
absolute figures, between runs):

- whole process (fresh ``python -m cxrscreen`` each time, medians of ``--repeats``): ``predict DIR --format csv``
  with ``--backend torch`` and ``--backend onnx`` (alternated) on ``--images`` files (their ratio: target >= 2x), ``--help``
  (target <= 0.5 s) and ``from cxrscreen import load_model; load_model()`` (target <= 2 s);
- ``load_model().predict(path)``: median over ``--latency-images`` files with the defaults (target <= 40 ms), then
  the same while a ``yes > /dev/null`` process keeps one CPU busy (target: within 2x of idle);
- training preparation (lung crop + mask + CLAHE, the bundled model's preprocessing) into a cold cache through
  :func:`cxrscreen.data.cache.load_prepared`, images/s (target >= 150);
- the classifier's own throughput on batches of 32 prepared images: torch eager and ONNX Runtime as the predictor
  runs them (workers), and one ONNX Runtime session with its default threads; the whole ``predict`` as a share of
  each (target >= 50%);
- the ceiling that the lung segmenter leaves: ``predict_batch`` on the same files in one process (no start-up),
  as it runs and with every lung mask handed to it ready (the segmenter and its post-processing cost nothing),
  each as a share of one ONNX Runtime session of the classifier measured between them;
- a breakdown of the per-image cost of each stage (ms/image, batches of 32, ONNX Runtime where there is a choice):
  decode, lung segmenter network, mask post-processing + lung crop/mask, CLAHE, classifier, OOD guard, and the
  start-up of a process (import + load) for each backend.

The images are a fixed random pick over the Radiography DB (all classes), linked into a temporary folder; the ONNX
exports are made once, before timing, into a temporary cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 32
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "COVID-19_Radiography_Dataset"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

LATENCY_SCRIPT = """
import json, statistics, sys, time
from cxrscreen import load_model
files = sys.argv[1:]
model = load_model()
for path in files[:3]:
    model.predict(path)
times = []
for path in files:
    start = time.perf_counter()
    model.predict(path)
    times.append((time.perf_counter() - start) * 1000.0)
print(json.dumps({"median_ms": statistics.median(times), "threads": model.threads}))
"""


def pick_files(data: Path, count: int) -> list[Path]:
    """``count`` image files spread over ``data`` (recursed), fixed for repeatability."""
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    chosen = np.random.default_rng(0).choice(len(files), min(count, len(files)), replace=False)
    return [files[i] for i in sorted(chosen)]


def linked_folder(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        (folder / f"{i:04d}{path.suffix.lower()}").symlink_to(path)
    return folder


def seconds(command: list[str], env: dict[str, str]) -> float:
    """Wall time of one process; its failure stops the benchmark (a broken command has no speed)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}...: exit {done.returncode}\n{done.stderr[-2000:]}")
    return elapsed


def median_seconds(command: list[str], env: dict[str, str], repeats: int) -> float:
    return statistics.median(seconds(command, env) for _ in range(repeats))


def latency(files: list[Path], env: dict[str, str], busy: bool) -> dict:
    """Median ms of ``load_model().predict(path)`` in a fresh process; ``busy``: with ``yes`` on one CPU."""
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
    try:
        if hog is not None:
            time.sleep(1.0)  # let the scheduler see the load before the model chooses its threads
        out = subprocess.run([sys.executable, "-c", LATENCY_SCRIPT, *map(str, files)], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.strip().splitlines()[-1])


def preparation_rate(files: list[Path], repeats: int) -> float:
    """Images/s of the training cache's preparation (bundled model's preprocessing) into a cold cache."""
    from cxrscreen.data.cache import load_prepared
    from cxrscreen.inference.predictor import DEFAULT_MODEL
    from cxrscreen.lungs.finder import load_lung_finder
    from cxrscreen.models.checkpoint import load_checkpoint
    from cxrscreen.threads import configure_threads

    configure_threads()  # as `train` does before it builds its cache
    pp = load_checkpoint(DEFAULT_MODEL)[1].preprocessing
    lungs = load_lung_finder()  # what `train` hands its cache
    load_prepared(files[:4], pp, progress=False, use_cache=False, lungs=lungs)  # segmenter loaded before timing
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cold:
            start = time.perf_counter()
            load_prepared(files, pp, cache_dir=Path(cold), progress=False, lungs=lungs)
            rates.append(len(files) / (time.perf_counter() - start))
    return statistics.median(rates)


def per_image_ms(fn, count: int, repeats: int) -> float:
    """Median over ``repeats`` of (time of ``fn()``) / ``count``, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0 / count)
    return statistics.median(times)


def stage_breakdown(model: Path | None, files: list[Path], repeats: int) -> dict[str, float]:
    """ms/image of each stage on one batch of real files (ONNX Runtime networks, one thread)."""
    from cxrscreen.data.imageio import load_xray
    from cxrscreen.data.lung_focus import apply_lung_mode, typical_lung_mask
    from cxrscreen.data.transforms import equalize, resize
    from cxrscreen.inference.predictor import load_predictor
    from cxrscreen.guard.inputs import guard_thumbnail
    from cxrscreen.lungs.segmenter import load_segmenter, probabilities_to_segmentation

    batch = files[:BATCH]
    predictor = load_predictor(model, backend="onnx", threads=1)
    pp = predictor.meta.preprocessing
    segmenter = load_segmenter(backend="onnx")
    images = [load_xray(p) for p in batch]
    probs = segmenter.probabilities(images)
    masks = []
    for image, prob in zip(images, probs):
        found = probabilities_to_segmentation(prob, image.shape, segmenter.limits)
        masks.append(found.mask if found.plausible else typical_lung_mask(image.shape))

    def post_process() -> list[np.ndarray]:
        out = []
        for image, prob in zip(images, probs):
            found = probabilities_to_segmentation(prob, image.shape, segmenter.limits)
            mask = found.mask if found.plausible else typical_lung_mask(image.shape)
            out.append(resize(apply_lung_mode(image, mask, pp), pp.img_size))
        return out

    resized = post_process()
    prepared = np.stack([np.clip(equalize(r, pp.equalize), 0, 1) for r in resized]).astype(np.float32)
    thumbs = np.stack([guard_thumbnail(image) for image in images])
    predictor.predict_prepared(prepared, thumbs)  # warm-up
    n = len(batch)
    return {
        "decode": per_image_ms(lambda: [load_xray(p) for p in batch], n, repeats),
        "segment (network)": per_image_ms(lambda: segmenter.probabilities(images), n, repeats),
        "post-process + lung crop": per_image_ms(post_process, n, repeats),
        "equalise (CLAHE)": per_image_ms(lambda: [equalize(r, pp.equalize) for r in resized], n, repeats),
        "classify": per_image_ms(lambda: predictor.predict_prepared(prepared), n, repeats),
        "guard (thumbnail + network)": per_image_ms(
            lambda: predictor.guard_runner(np.stack([guard_thumbnail(i) for i in images])), n, repeats),
    }


def classifier_throughput(model: Path | None, files: list[Path], repeats: int) -> dict[str, float]:
    """Images/s of the classifier alone on a batch of 32 prepared images: torch eager and ONNX Runtime as a
    predictor runs them by default (workers side by side, each network single-threaded), and one ONNX Runtime
    session with its own default threads (one per core: the issue's "150-205 images/s"); rounds interleaved so that
    a busy CPU hurts all alike."""
    from cxrscreen.data.transforms import prepare_from_source
    from cxrscreen.inference.onnx_runtime import OnnxRuntimeBackend, prepared_for_onnx
    from cxrscreen.inference.predictor import load_predictor, resolve_model_path
    from cxrscreen.lungs.segmenter import load_segmenter

    predictors = {name: load_predictor(model, backend=name) for name in ("torch", "onnx")}
    session = OnnxRuntimeBackend(prepared_for_onnx(resolve_model_path(model)).graph)  # ONNX Runtime's own threads
    pp = predictors["torch"].meta.preprocessing
    batch = np.stack([prepare_from_source(p, pp, find_lungs=load_segmenter().plausible_mask) for p in files[:BATCH]])
    runners = {name: predictor.predict_prepared for name, predictor in predictors.items()}
    runners["onnx_session"] = lambda images: session.run(images[:, None])
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner(batch)
    for _ in range(max(repeats, 3)):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(batch)
            speeds[name].append(len(batch) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in speeds.items()}


def lungs_given_ceiling(model: Path | None, files: list[Path], repeats: int) -> dict[str, float]:
    """Images/s of ``predict_batch`` over ``files`` in this process (defaults: ONNX Runtime, workers) as it runs and
    with the lungs given (each image's mask found beforehand and looked up by its pixels), and of the classifier
    alone in one ONNX Runtime session (batch 32, its own threads); rounds interleaved."""
    import hashlib

    from cxrscreen.data.transforms import CallableLungFinder
    from cxrscreen.inference.onnx_runtime import OnnxRuntimeBackend, prepared_for_onnx
    from cxrscreen.inference.predictor import load_predictor, resolve_model_path

    predictor = load_predictor(model)
    paths = [str(p) for p in files]
    find_lungs = predictor.find_lungs
    masks: dict[bytes, np.ndarray | None] = {}

    def key(image: np.ndarray) -> bytes:
        return hashlib.blake2b(image.tobytes(), digest_size=16).digest()

    def finding(images):
        found = find_lungs(images)
        masks.update((key(image), mask) for image, mask in zip(images, found))
        return found

    predictor.lungs = CallableLungFinder(finding, "counted")
    expected = predictor.predict_batch(paths)  # finds every mask once
    session = OnnxRuntimeBackend(prepared_for_onnx(resolve_model_path(model)).graph)
    batch = np.random.default_rng(0).random((BATCH, 1, predictor.img_size, predictor.img_size), dtype=np.float32)
    session.run(batch)
    finders = {"as_run": find_lungs, "lungs_given": lambda images: [masks[key(image)] for image in images]}
    speeds: dict[str, list[float]] = {"as_run": [], "lungs_given": [], "classifier_session": []}
    for _ in range(max(repeats, 3)):
        for name, finder in finders.items():
            predictor.lungs = CallableLungFinder(finder, name)
            start = time.perf_counter()
            results = predictor.predict_batch(paths)
            speeds[name].append(len(paths) / (time.perf_counter() - start))
            assert results == expected, "the lungs given must give the same predictions"
        rounds = max(1, len(paths) // BATCH)  # as many images as predict_batch scored
        start = time.perf_counter()
        for _ in range(rounds):
            session.run(batch)
        speeds["classifier_session"].append(rounds * BATCH / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in speeds.items()}


def run(args: argparse.Namespace, tmp: Path) -> dict:
    files = pick_files(args.data, max(args.images, args.latency_images + 3))
    folder = linked_folder(files[: args.images], tmp / "images")
    env = {**os.environ, "CXRSCREEN_CACHE": str(tmp / "cache")}
    os.environ["CXRSCREEN_CACHE"] = env["CXRSCREEN_CACHE"]
    cli = [sys.executable, "-m", "cxrscreen"]
    model = ["--model", str(args.model)] if args.model else []
    warm = linked_folder(files[:2], tmp / "warm")
    for backend in ("torch", "onnx"):  # ONNX exports and file-system caches made before timing
        seconds([*cli, "predict", str(warm), *model, "--backend", backend, "--format", "csv"], env)
    results: dict = {"images": len(files[: args.images]), "repeats": args.repeats}
    # Alternated, so that a load that comes and goes on the shared machine slows both backends alike.
    runs: dict[str, list[float]] = {"torch": [], "onnx": []}
    for _ in range(args.repeats):
        for backend in runs:
            runs[backend].append(
                seconds([*cli, "predict", str(folder), *model, "--backend", backend, "--format", "csv"], env))
    for backend, times in runs.items():
        results[f"predict_{backend}_s"] = statistics.median(times)
    results["help_s"] = median_seconds([*cli, "--help"], env, args.repeats)
    load = "from cxrscreen import load_model; load_model({})"
    results["load_model_s"] = median_seconds([sys.executable, "-c", load.format("")], env, args.repeats)
    results["load_model_onnx_s"] = median_seconds(
        [sys.executable, "-c", load.format("backend='onnx'")], env, args.repeats)
    sample = files[-args.latency_images :]
    results["latency_idle"] = latency(sample, env, busy=False)
    results["latency_busy"] = latency(sample, env, busy=True)
    results["prepare_img_s"] = preparation_rate(files[: args.images], 1)
    results["classifier_img_s"] = classifier_throughput(args.model, files, args.repeats)
    results["ceiling_img_s"] = lungs_given_ceiling(args.model, files[: args.images], args.repeats)
    results["breakdown_ms"] = stage_breakdown(args.model, files, args.repeats)
    return results


def print_table(r: dict) -> None:
    torch_s, onnx_s = r["predict_torch_s"], r["predict_onnx_s"]
    idle, busy = r["latency_idle"]["median_ms"], r["latency_busy"]["median_ms"]
    classifier, onnx_rate = r["classifier_img_s"], r["images"] / onnx_s
    rows = [
        (f"predict DIR --format csv, torch ({r['images']} img)", f"{torch_s:.1f} s", f"{r['images'] / torch_s:.0f} img/s", ""),
        (f"predict DIR --format csv, onnx ({r['images']} img)", f"{onnx_s:.1f} s", f"{r['images'] / onnx_s:.0f} img/s",
         f"{torch_s / onnx_s:.2f}x torch (>= 2x)"),
        ("cxrscreen --help", f"{r['help_s']:.2f} s", "", "<= 0.5 s"),
        ("load_model() (import + load), defaults (auto)", f"{r['load_model_s']:.2f} s", "", "<= 2 s"),
        ("load_model(backend='onnx')", f"{r['load_model_onnx_s']:.2f} s", "", ""),
        ("predict(path) median, defaults, idle", f"{idle:.1f} ms", f"threads {r['latency_idle']['threads']}", "<= 40 ms"),
        ("the same beside `yes > /dev/null`", f"{busy:.1f} ms", f"threads {r['latency_busy']['threads']}",
         f"{busy / idle:.2f}x idle (<= 2x)"),
        ("training preparation, cold cache", f"{r['prepare_img_s']:.0f} img/s", "", ">= 150 img/s"),
        ("classifier alone, torch eager @32, workers", f"{classifier['torch']:.0f} img/s", "", ""),
        ("classifier alone, ONNX Runtime @32, workers", f"{classifier['onnx']:.0f} img/s", "",
         f"{classifier['onnx'] / classifier['torch']:.2f}x torch; whole predict {onnx_rate / classifier['onnx']:.0%} of it"),
        ("classifier alone, one ONNX Runtime session @32", f"{classifier['onnx_session']:.0f} img/s", "",
         f"whole predict {onnx_rate / classifier['onnx_session']:.0%} of it (>= 50%)"),
    ]
    ceiling = r["ceiling_img_s"]
    session = ceiling["classifier_session"]
    rows += [
        ("in one process: predict_batch, as it runs", f"{ceiling['as_run']:.0f} img/s", "",
         f"{ceiling['as_run'] / session:.0%} of the classifier's session ({session:.0f} img/s, same loop)"),
        ("the same with the lungs given (segmenter free)", f"{ceiling['lungs_given']:.0f} img/s", "",
         f"{ceiling['lungs_given'] / session:.0%} of it: the ceiling without start-up"),
    ]
    print(f"{'measure (median of ' + str(r['repeats']) + ')':<48} {'value':>11} {'':>13}  ratio / target")
    for name, value, extra, note in rows:
        print(f"{name:<48} {value:>11} {extra:>13}  {note}")
    print("\nbreakdown, ms per image (batch of 32, ONNX Runtime, 1 thread):")
    for stage, ms in r["breakdown_ms"].items():
        print(f"  {stage:<30} {ms:7.2f}")
    print(f"  {'start-up (process, onnx)':<30} {r['load_model_onnx_s'] * 1000:7.0f} once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint .pt or run directory (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real X-rays (recursed)")
    parser.add_argument("--images", type=int, default=512, help="images for the whole-process predict rows")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measure (medians are shown)")
    parser.add_argument("--latency-images", type=int, default=50, help="files timed one at a time")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
