"""Every corpus case through load_xray / load_dataset: a correct decode or one clear error, never a hang or a leak."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from badinputs.corpus import Case, build_corpus
from cxrscreen.data.imageio import load_xray
from cxrscreen.errors import CxrError, DatasetLayoutError, ImageDecodeError

# Generous on purpose: this only tells a hang (a decoder stuck in C) from a slow machine, and fails just this test.
HANG_TIMEOUT_S = 600.0


def _run_and_send(check: Callable[..., Any], args: tuple, sender) -> None:
    try:
        sender.send(("ok", check(*args)))
    except BaseException:  # noqa: BLE001 - whatever happened goes back to the test, traceback included
        sender.send(("raised", traceback.format_exc()))


def run_isolated(check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)`` in a forked child: a hang fails this test after HANG_TIMEOUT_S instead of blocking (or, with a
    watchdog, killing) the whole run; an exception in the child fails the test with the child's traceback."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_and_send, args=(check, args, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(HANG_TIMEOUT_S):
            pytest.fail(f"{getattr(check, '__name__', check)} gave no result within {HANG_TIMEOUT_S:.0f} s: a hang")
        status, value = receiver.recv()
    finally:
        child.kill()
        child.join()
    if status == "raised":
        pytest.fail(f"raised in the isolated check:\n{value}", pytrace=False)
    return value


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("badinputs"))


def test_corpus_covers_the_required_cases(corpus: list[Case]) -> None:
    names = {case.name for case in corpus}
    assert len(corpus) >= 20
    for required in ("zero_bytes.png", "bomb_30000x30000.png", "cmyk.jpg", "exif_rotated.jpg", "mono1.dcm",
                     "rle.dcm", "j2k.dcm", "h264.dcm", "multiframe.dcm", "loop.png", "not_utf8.csv"):
        assert required in names
    assert {case.expect for case in corpus} == {"ok", "error"}


def assert_clean_error(exc: CxrError, case: Case) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert message.startswith(str(case.path)), message
    assert case.reason_substring in message, message


def check_image_case(case: Case) -> str | None:
    """None when ``load_xray`` does what the case expects, else what went wrong."""
    try:
        image = load_xray(case.path)
    except ImageDecodeError as exc:
        if case.expect == "ok":
            return f"{case.name}: unexpected error {exc}"
        try:
            assert_clean_error(exc, case)
        except AssertionError as failure:
            return f"{case.name}: unclear error: {failure}"
        return None
    if case.expect == "error":
        return f"{case.name}: decoded, but should fail with '{case.reason_substring}'"
    if image.dtype != np.float32 or image.shape != case.expected_image.shape:
        return f"{case.name}: {image.dtype} {image.shape}, expected float32 {case.expected_image.shape}"
    if image.min() < 0.0 or image.max() > 1.0:
        return f"{case.name}: values outside [0, 1]"
    error = float(np.abs(image - case.expected_image).mean())
    if error > case.tolerance:
        return f"{case.name} ({case.reason_substring}): mean abs error {error:.4f} > {case.tolerance:.4f}"
    return None


def check_image_cases(corpus: list[Case]) -> list[str]:
    return [problem for case in corpus if case.target == "image" if (problem := check_image_case(case))]


def test_every_image_case(corpus: list[Case]) -> None:
    """Any other exception type escaping load_xray fails this test with its traceback."""
    failures = run_isolated(check_image_cases, corpus)
    assert not failures, "\n".join(failures)


def test_sixteen_bit_keeps_its_depth(corpus: list[Case]) -> None:
    image = load_xray(next(case.path for case in corpus if case.name == "gray16.png"))
    assert image.max() > 0.9  # clipped-at-255 data would come out near 255/65535
    assert len(np.unique(image)) > 256  # more grey levels than 8 bits can hold


def test_rotation_and_inversion_are_not_no_ops(corpus: list[Case]) -> None:
    """The references of EXIF and MONOCHROME1 cases differ clearly from what ignoring the tag would give."""
    by_name = {case.name: case for case in corpus}
    rotated = load_xray(by_name["exif_rotated.jpg"].path)
    assert rotated.shape == (48, 64)  # stored as 64 x 48
    mono1, mono2 = load_xray(by_name["mono1.dcm"].path), load_xray(by_name["mono2_12bit.dcm"].path)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_bytes_input_gives_the_same_result(corpus: list[Case]) -> None:
    for case in corpus:
        if case.target == "image" and case.path.is_file() and case.name != "unreadable.png":
            data = case.path.read_bytes()
            try:
                from_path = load_xray(case.path)
            except ImageDecodeError:
                with pytest.raises(ImageDecodeError, match="^<upload>: "):
                    load_xray(data)
                continue
            np.testing.assert_array_equal(load_xray(data), from_path)


def test_mutated_files_give_only_decode_errors(corpus: list[Case]) -> None:
    """Cut and byte-flipped versions of every good file: a decode or an ImageDecodeError, nothing else."""
    run_isolated(check_mutated_files, corpus)


def check_mutated_files(corpus: list[Case]) -> None:
    rng = np.random.default_rng(0)
    good = [case for case in corpus if case.target == "image" and case.expect == "ok" and case.path.is_file()]
    for case in good:
        data = case.path.read_bytes()
        variants = [data[: int(len(data) * f)] for f in (0.05, 0.3, 0.7, 0.95)]
        for _ in range(6):
            flipped = np.frombuffer(data, dtype=np.uint8).copy()
            flipped[rng.integers(0, len(data), size=4)] ^= rng.integers(1, 256, size=4, dtype=np.uint8)
            variants.append(flipped.tobytes())
        for variant in variants:
            try:
                image = load_xray(variant, name=case.name)
            except ImageDecodeError as exc:
                assert "\n" not in str(exc) and str(exc).startswith(case.name)
                continue
            assert image.dtype == np.float32 and image.ndim == 2 and 0 <= image.min() <= image.max() <= 1


def load_dataset_case(path: Path) -> tuple[list[str], dict] | DatasetLayoutError:
    """What loading a dataset case gives: (paths, dropped), or its layout error (a symlink loop must not hang)."""
    from cxrscreen.data.sources import load_dataset

    try:
        dataset = load_dataset(path)
    except DatasetLayoutError as exc:
        return exc
    return list(dataset.paths), dict(dataset.dropped)


@pytest.mark.parametrize("name", ["tree_with_loop", "missing_columns.csv", "unknown_labels.csv",
                                  "relative_paths.csv", "not_utf8.csv"])
def test_dataset_case(corpus: list[Case], name: str) -> None:
    case = next(case for case in corpus if case.name == name)
    outcome = run_isolated(load_dataset_case, case.path)
    if case.expect == "error":
        assert isinstance(outcome, DatasetLayoutError), outcome
        assert_clean_error(outcome, case)
        return
    assert not isinstance(outcome, Exception), outcome
    paths, dropped = outcome
    assert len(paths) == case.details["images"]
    assert len(set(paths)) == len(paths)
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in paths)
    assert dropped == case.details.get("dropped", {})
