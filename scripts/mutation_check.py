"""Break the source on purpose, one deliberate defect at a time, and check that the tests meant to catch it fail.

Each :class:`Mutation` replaces one exact piece of text in one source file (the text must occur exactly once),
runs its pytest node ids, and restores the file in a ``finally`` whatever happens. The table printed at the end
says, per mutation, whether the tests caught it (pytest failed). Add an entry to ``MUTATIONS`` to guard a new
promise; run from the repository root:

    .venv/bin/python scripts/mutation_check.py            # every mutation
    .venv/bin/python scripts/mutation_check.py -k ddp     # those whose name contains "ddp"

Exit status 1 when some mutation was not caught. Other people's edits to a mutated file during a run would be
lost on restore: run it when nobody else is editing those files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail with the mutation in place


MUTATIONS = [
    Mutation(
        "no-op optimiser step",
        "src/cxrscreen/training/steps.py",
        "    optimizer.step()\n",
        "    pass  # optimizer.step()\n",
        ("tests/training/test_learning.py::test_training_learns_the_task_and_changes_the_weights",),
    ),
    Mutation(
        "DDP without gradient sync",
        "src/cxrscreen/training/distributed.py",
        "    return DistributedDataParallel(model)\n",
        "    return model\n",
        ("tests/training/test_distributed.py::test_ddp_ranks_take_the_step_of_the_global_batch",),
    ),
    Mutation(
        "wrong leakage threshold (1 bit per 64)",
        "src/cxrscreen/training/config.py",
        "    dedup_distance: int = DEFAULT_MAX_DISTANCE\n",
        "    dedup_distance: int = 1\n",
        ("tests/training/test_train_cli.py::test_split_keeps_near_duplicates_on_one_side",),
    ),
    Mutation(
        "early stopping never fires",
        "src/cxrscreen/training/trainer.py",
        "            if self.state.epochs_without_improvement >= cfg.patience:\n",
        "            if False:\n",
        ("tests/training/test_learning.py::test_early_stopping_stops_on_time_and_keeps_the_best_epoch",),
    ),
    Mutation(
        "best.pt follows the last epoch",
        "src/cxrscreen/training/trainer.py",
        "            if improved:\n                save_checkpoint(self.files.best",
        "            if True:\n                save_checkpoint(self.files.best",
        ("tests/training/test_learning.py::test_early_stopping_stops_on_time_and_keeps_the_best_epoch",),
    ),
    Mutation(
        "resume does not restore the optimiser",
        "src/cxrscreen/training/trainer.py",
        '        self.optimizer.load_state_dict(extra["optimizer"])\n',
        "",
        ("tests/training/test_learning.py::test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one",),
    ),
    Mutation(
        "augmentation RNG carried across epochs (a resumed run draws other augmentations)",
        "src/cxrscreen/training/trainer.py",
        "        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 7 + ctx.rank)\n",
        "        generator = self.augment.generator\n",
        ("tests/training/test_learning.py::test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one",),
    ),
    Mutation(
        "temperature fitted on too few images",
        "src/cxrscreen/metrics/calibration.py",
        "    if n < min_images:\n",
        "    if n < 0:\n",
        ("tests/metrics/test_calibration.py::test_choose_temperature_keeps_one_below_the_minimum_number_of_images",
         "tests/training/test_train_cli.py::test_too_few_validation_images_keep_temperature_one_and_say_why"),
    ),
    Mutation(
        "temperature search bounds ignored at the edge",
        "src/cxrscreen/metrics/calibration.py",
        "    if fitted <= lo * 1.001 or fitted >= hi / 1.001:\n",
        "    if False:\n",
        ("tests/metrics/test_calibration.py::test_choose_temperature_keeps_one_when_the_fit_stops_at_a_bound",),
    ),
    Mutation(
        "report ignores the test metrics train measured",
        "src/cxrscreen/evaluation/report.py",
        "    if metrics is None and training_test:\n",
        "    if False:\n",
        ("tests/training/test_train_cli.py::test_report_written_by_train_shows_the_test_metrics_it_measured",
         "tests/evaluation/test_report.py::test_report_before_evaluate_shows_the_test_split_train_measured"),
    ),
    Mutation(
        "ONNX Runtime sees another input than torch (the preprocessing drifts between backends)",
        "src/cxrscreen/inference/onnx_export.py",
        "{INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}",
        "{INPUT_NAME: np.ascontiguousarray(batch * 0.95, dtype=np.float32)}",
        ("tests/inference/test_onnx_parity.py::test_bundled_model_gives_the_same_answers_in_torch_and_onnx_runtime",),
    ),
    Mutation(
        "CLAHE clip limit drifts",
        "src/cxrscreen/data/transforms.py",
        "    return equalize_adapthist(np.clip(image, 0, 1), clip_limit=0.01)\n",
        "    return equalize_adapthist(np.clip(image, 0, 1), clip_limit=0.02)\n",
        ("tests/data/test_equalise.py",),
    ),
    Mutation(
        "Grad-CAM explains the raw image, not the input that was scored",
        "src/cxrscreen/inference/predictor.py",
        "torch.from_numpy(prepared.input)[None, None]",
        "torch.from_numpy(np.ascontiguousarray(prepared.to_input(original)))[None, None]",
        ("tests/inference/test_prepared_input.py::test_explain_runs_on_exactly_the_input_predict_scored",),
    ),
    Mutation(
        "predictions.csv rounds probabilities",
        "src/cxrscreen/evaluation/results.py",
        "repr(float(p)) for p in",
        "f'{p:.2f}' for p in",
        ("tests/evaluation/test_evaluate.py::test_internal_test_split_from_run_directory",),
    ),
    Mutation(
        "near-duplicate index skips a one-bit probe",
        "src/cxrscreen/data/hash_index.py",
        "    for k in range(bits if radius else 0):\n",
        "    for k in range(bits - 1 if radius else 0):\n",
        ("tests/data/test_hash_index.py",),
    ),
    Mutation(
        "near-duplicate index one block short of the pigeonhole",
        "src/cxrscreen/data/hash_index.py",
        "            for m in range(needed // (radius + 1) + 1, total_bits + 1):\n",
        "            for m in range(needed // (radius + 1), total_bits + 1):\n",
        ("tests/data/test_hash_index.py",),
    ),
]


def run_tests(tests: tuple[str, ...]) -> bool:
    """True when pytest failed (the mutation was caught)."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode != 0


def check(mutation: Mutation) -> bool:
    path = ROOT / mutation.file
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.file}: the text of mutation {mutation.name!r} occurs "
                         f"{original.count(mutation.old)} times (must be once); update the entry")
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        return run_tests(mutation.tests)
    finally:
        path.write_text(original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="pattern", default="", help="only mutations whose name contains this")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.pattern.lower() in m.name.lower()]
    rows = []
    for mutation in chosen:
        caught = check(mutation)
        rows.append((mutation.name, " ".join(t.split("::")[-1] for t in mutation.tests), "yes" if caught else "NO"))
        print(f"{mutation.name}: {'caught' if caught else 'NOT caught'}", file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in rows + [("mutation", "tests", "caught")]) for i in range(3)]
    for row in [("mutation", "tests", "caught"), tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return 0 if all(r[2] == "yes" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
