"""Recipes benchmark (issue 19): which training recipe makes a model read disease rather than age or hospital?

    .venv/bin/python benchmarks/generalisation.py [--recipes R0,R1,R2,R3,R4] [--leave-out all|none|TB,MS,JSRT]
        [--img-size 128] [--epochs 3] [--limit-per-class N] [--cap-per-cell N] [--jobs 1] [--num-threads N]
        [--audit-images 300] [--bootstrap 1000] [--seed 0] [--out runs/generalisation] [--json FILE]

The recipes, each trained on the same seed with lung-focused preprocessing (``crop_mask`` + ``clahe``):

- R0 "bundled": today's bundled recipe, Radiography DB only, 3 classes ``covid,normal,viral`` (its covid
  probability scored as COVID-vs-rest);
- R1 "+adult": binary ``covid,other`` on Radiography DB + TB DB + Montgomery/Shenzhen + JSRT;
- R2 "+balance": R1 with ``--balance class_source``; R3 "+style": R2 with ``--style histmatch,tone,mixstyle``;
- R4 "+adversary": R3 with ``--adversary source``.

R1-R4 read one manifest of the adult collections and one split of it (``OUT/data``), so they train and are
tested on the very same images. For each recipe, side by side:

- internal test accuracy and COVID sensitivity (the run's own test split; R0's task has 3 classes);
- ieee8023 COVID-vs-rest AUROC with its 95% CI (never trained on; near-duplicates of the training images left
  out, their number printed);
- the share of adult non-COVID X-rays called COVID in a collection left out of training: each of TB,
  Montgomery+Shenzhen (MS) and JSRT in turn, one extra training per left-out collection per recipe (R0 trains on
  none of them, so its main model is scored on all three);
- Kermany test NORMAL (healthy children) called normal (binary models: called ``other``);
- the shortcut audit on at most ``--audit-images`` ieee8023 images: AUROC as they are and with the lungs hidden;
- the source probe: cross-validated accuracy of a linear probe telling internal from ieee8023 COVID images apart
  from the model's features (as many of each, so the majority rate is 50%).

Budget: ``--limit-per-class N`` draws at most N images per class (seeded) and keeps each class's natural mix of
collections; ``--cap-per-cell N`` keeps at most N images of each (class, collection) cell, which evens the
collections out by itself (so it does part of R2's work: prefer ``--limit-per-class`` to measure the levers).
A recipe the trainer refuses (e.g. ``--adversary source`` on data where every class comes from one collection) is
shown as refused, with the trainer's reason; in ``covid,other`` the class ``other`` comes from five collections, so
R4's class-conditional adversary trains.

All images are hashed and prepared before any training (the caches are on disk), then the trainings run, up to
``--jobs`` at a time, each process pinned to its share of the CPUs (``--jobs 2`` on two cores: two trainings with
one thread each). A finished run under ``--out`` is reused (one trained with other settings is refused), and so
are its measurements when the measuring settings are unchanged. The plan with an estimated time per recipe is
printed first (``--plan`` stops there), the measured times in the table's last row. One markdown table goes to
stdout, the numbers to ``--json`` (default ``OUT/generalisation.json``).

Quick end-to-end check (about 5 minutes on a shared 2-core machine):

    .venv/bin/python benchmarks/generalisation.py --img-size 64 --epochs 1 --limit-per-class 40 --recipes R0,R1 \\
        --leave-out JSRT --audit-images 40 --bootstrap 200 --out runs/generalisation_tiny

The lead's run (2-core CPU; the plan estimates 35 minutes' wall time on an idle machine, all 17 trainings;
``--limit-per-class 2000`` about 60):

    .venv/bin/python benchmarks/generalisation.py --img-size 128 --epochs 3 --limit-per-class 1000 --jobs 2 \\
        --out runs/generalisation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxrscreen.errors import ConfigError, CxrError, RunDirError
from cxrscreen.io_utils import write_json
from cxrscreen.run_dir import RunDir
from cxrscreen.threads import available_cpus
from cxrscreen.training.config import TrainConfig
from cxrscreen.training.run_data import run_dataset
from cxrscreen.training.trainer import train

from generalisation_data import LEAVE_OUT, RADIOGRAPHY, build_adult_data, evaluation_paths, warm_caches
from generalisation_measure import MEASURE_KEYS, measure_left_out, measure_main

# Training images per second per CPU core at 128 px (EfficientNet-Lite0, augmentation, one torch thread), what a
# training costs besides its epochs (loading, validation, calibration, the OOD guard, the test split), and what
# measuring one model costs at --audit-images 300: measured on the 2-core development machine while it was shared
# (load 5: 9 images/s with 2 threads, 26 s besides the epoch, 47 s of measuring at --audit-images 100) and scaled
# to an otherwise idle machine.
IMAGES_PER_S_AT_128 = 24.0
TRAIN_OVERHEAD_MINUTES = 0.3
MEASURE_MINUTES = 2.0
PREPARE_IMAGES_PER_S = 40.0  # cold-cache preparation with the lung segmenter on 2 cores (README)


@dataclass(frozen=True)
class Recipe:
    """A recipe's short name, task, whether it trains on the adult collections, and its TrainConfig settings."""

    name: str
    classes: str
    adult: bool
    settings: dict[str, str] = field(default_factory=dict)


RECIPES = {
    "R0": Recipe("bundled", "covid,normal,viral", adult=False),
    "R1": Recipe("+adult", "covid,other", adult=True),
    "R2": Recipe("+balance", "covid,other", adult=True, settings={"balance": "class_source"}),
    "R3": Recipe("+style", "covid,other", adult=True, settings={"balance": "class_source", "style": "histmatch,tone,mixstyle"}),
    "R4": Recipe("+adversary", "covid,other", adult=True,
                 settings={"balance": "class_source", "style": "histmatch,tone,mixstyle", "adversary": "source"}),
}


@dataclass(frozen=True)
class Job:
    """One training and its measurements: recipe ``recipe`` on all its data, or without collection ``left_out``."""

    recipe: str
    left_out: str | None
    cfg: TrainConfig
    train_images: int

    @property
    def name(self) -> str:
        return self.recipe if self.left_out is None else f"{self.recipe}_without_{self.left_out}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
    p.add_argument("--leave-out", default="all", help="collections left out in turn: all, none, or some of " + ",".join(LEAVE_OUT))
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit-per-class", type=int, metavar="N", help="train on at most N images per class")
    p.add_argument("--cap-per-cell", type=int, metavar="N", help="at most N images per (class, collection) cell")
    p.add_argument("--lung-mode", default="crop_mask")
    p.add_argument("--equalize", default="clahe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side (each pinned to its share of the CPUs)")
    p.add_argument("--num-threads", type=int, help="torch threads per training (default: its share of the CPUs)")
    p.add_argument("--audit-images", type=int, default=300, help="ieee8023 images for the shortcut audit")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("runs/generalisation"))
    p.add_argument("--json", type=Path, help="also write the numbers here (default: OUT/generalisation.json)")
    p.add_argument("--plan", action="store_true", help="print the trainings and their estimated time, then stop")
    args = p.parse_args(argv)
    args.recipes = parse_choice(args.recipes, tuple(RECIPES), "--recipes")
    args.leave_out = [] if args.leave_out == "none" else list(LEAVE_OUT) if args.leave_out == "all" else \
        parse_choice(args.leave_out, LEAVE_OUT, "--leave-out")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    args.out = args.out.resolve()
    return args


def parse_choice(spec: str, known: tuple[str, ...], flag: str) -> list[str]:
    chosen = [name.strip().upper() for name in spec.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise ConfigError(f"{flag}: choose from {', '.join(known)} (got {spec!r})")
    return chosen


def base_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(data=[str(RADIOGRAPHY)], model=args.model, img_size=args.img_size, epochs=args.epochs,
                       batch_size=args.batch_size, seed=args.seed, lung_mode=args.lung_mode, equalize=args.equalize,
                       num_threads=threads_per_job(args), device=args.device)


def recipe_config(base: TrainConfig, recipe: str, out: Path, **data: Any) -> TrainConfig:
    """``base`` with the recipe's classes and settings; a setting this checkout's TrainConfig lacks is refused."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = [key for key in RECIPES[recipe].settings if key not in known]
    if missing:
        raise ConfigError(f"recipe {recipe} needs TrainConfig field(s) {', '.join(missing)}, which this checkout lacks")
    return dataclasses.replace(base, classes=RECIPES[recipe].classes, out=str(out), name=f"generalisation-{recipe}",
                               **RECIPES[recipe].settings, **data)


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """Every training the benchmark needs, with the adult data written first when a recipe uses it."""
    base = base_config(args)
    jobs: list[Job] = []
    if "R0" in args.recipes:
        limits = [n for n in (args.limit_per_class, args.cap_per_cell) if n is not None]
        cfg = recipe_config(base, "R0", args.out / "R0", limit_per_class=min(limits) if limits else None)
        _, _, dataset = run_dataset(cfg, log=lambda line: None)
        jobs.append(Job("R0", None, cfg, round(len(dataset) * cfg.fractions[0])))
    adult_recipes = [r for r in args.recipes if RECIPES[r].adult]
    if adult_recipes:
        adult = build_adult_data(args.out / "data", args.limit_per_class, args.cap_per_cell, args.seed)
        print(f"adult data: {', '.join(f'{k} {n}' for k, n in adult.counts.items())} images "
              f"({adult.manifest}, split {adult.split})", file=sys.stderr)
        trained = sum(adult.train_counts.values())
        for recipe in adult_recipes:
            jobs.append(Job(recipe, None, recipe_config(base, recipe, args.out / recipe, data=[str(adult.manifest)],
                                                        split=str(adult.split)), trained))
            for key in args.leave_out:
                cfg = recipe_config(base, recipe, args.out / f"{recipe}_without_{key}", data=[str(adult.without[key])],
                                    split=str(adult.split))
                jobs.append(Job(recipe, key, cfg, trained - adult.train_counts[key]))
    return jobs


def training_paths(jobs: list[Job]) -> list[str]:
    """The images every job trains, validates and tests on (each distinct data selection listed once)."""
    selections = {(tuple(job.cfg.data), job.cfg.limit_per_class): job.cfg for job in jobs}
    return [path for cfg in selections.values() for path in run_dataset(cfg, log=lambda line: None)[2].paths]


def threads_per_job(args: argparse.Namespace) -> int | None:
    return args.num_threads or (max(1, available_cpus() // args.jobs) if args.jobs > 1 else None)


def estimated_minutes(job: Job, args: argparse.Namespace) -> float:
    """Training time from the measured speed (scaled by pixels and threads), plus measuring the model."""
    cores = job.cfg.num_threads or available_cpus()
    speed = IMAGES_PER_S_AT_128 * (128 / job.cfg.img_size) ** 2 * cores ** 0.7
    measuring = MEASURE_MINUTES * (0.4 + 0.6 * args.audit_images / 300) if job.left_out is None else 0.5
    return job.train_images * job.cfg.epochs / speed / 60 + TRAIN_OVERHEAD_MINUTES + measuring


def measure_settings(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """What a job's stored measurements depend on besides its run (reused only when they are unchanged)."""
    # R0 trains on none of the left-out collections: its main run scores them all.
    left_out = [job.left_out] if job.left_out else args.leave_out if not RECIPES[job.recipe].adult else []
    return {"audit_images": args.audit_images, "bootstrap": args.bootstrap, "seed": args.seed, "left_out": left_out}


# Settings that do not change what a run learns: a finished run trained under other values is still reused.
RUN_ONLY = ("out", "num_threads", "device", "name")


def ensure_trained(job: Job, log: Callable[[str], None]) -> float | None:
    """Train ``job`` unless its run has finished (then None; a finished run trained otherwise is refused)."""
    files = RunDir(job.cfg.out)
    if files.summary.is_file():
        wanted = {k: v for k, v in job.cfg.to_dict().items() if k not in RUN_ONLY}
        found = TrainConfig.from_dict(json.loads(files.config.read_text())).to_dict()
        differs = [f"{k}={found.get(k)!r} (asked {v!r})" for k, v in wanted.items() if found.get(k) != v]
        if differs:
            raise RunDirError(f"{job.cfg.out} was trained with {', '.join(differs)}: choose another --out or delete it")
        return None
    log(f"training ({job.train_images} images, {job.cfg.epochs} epochs, {job.cfg.num_threads or 'auto'} threads)")
    start = time.time()
    train(job.cfg, overwrite=True, progress=False, log=log)
    return time.time() - start


def run_job(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """Train (unless the run has finished) and measure (unless measured with the same settings); in a worker."""
    stored = args.out / "results" / f"{job.name}.json"
    previous = json.loads(stored.read_text()) if stored.is_file() else {}
    log = lambda line: print(f"[{job.name}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        train_s = ensure_trained(job, log)
    except ConfigError as exc:  # e.g. the adversary where every class comes from one collection: a row says so
        log(f"refused: {exc}")
        return {"job": job.name, "recipe": job.recipe, "refused": str(exc), "left_out": {},
                "seconds": {"train": None, "measure": 0.0}}
    settings = measure_settings(job, args)
    if train_s is None and previous.get("settings") == settings:
        log("reusing its measurements")
        return previous
    if train_s is None:  # a reused run: keep the training time measured when it was trained
        train_s = previous.get("seconds", {}).get("train")
    start = time.time()
    run = Path(job.cfg.out)
    if job.left_out is None:
        numbers = measure_main(run, settings["left_out"], args, log)
    else:
        numbers = {"left_out": {job.left_out: measure_left_out(run, job.left_out, args)}}
    measure_s = time.time() - start
    result = {"job": job.name, "recipe": job.recipe, "run": str(run), "settings": settings, **numbers,
              "seconds": {"train": None if train_s is None else round(train_s, 1), "measure": round(measure_s, 1)}}
    write_json(stored, result)
    log(f"done in {((train_s or 0) + measure_s) / 60:.1f} min")
    return result


def pin_to_cores(cores: Any) -> None:
    """Pool initializer: this worker runs on the CPUs it takes from ``cores`` (a queue of CPU sets)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores.get())


def run_jobs(jobs: list[Job], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every job, ``--jobs`` at a time (in this process when 1)."""
    if args.jobs == 1:
        return [run_job(job, args) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork of a process that has loaded torch
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(available_cpus()))
    cores = context.Queue()
    for i in range(args.jobs):
        cores.put(set(cpus[i :: args.jobs]) or set(cpus))
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=pin_to_cores, initargs=(cores,)) as pool:
        # Longest first, so that the last job to start is a short one.
        order = sorted(jobs, key=lambda job: -job.train_images)
        futures = {job.name: pool.submit(run_job, job, args) for job in order}
        return [futures[job.name].result() for job in jobs]


def collect(jobs: list[Job], outputs: list[dict[str, Any]], estimates: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per recipe: its main run's numbers, the left-out shares of its leave-out runs, and the minutes spent (and
    estimated beforehand)."""
    results: dict[str, dict[str, Any]] = {}
    for job, output in zip(jobs, outputs):
        entry = results.setdefault(job.recipe, {"left_out": {}, "minutes": 0.0, "estimated_minutes": 0.0, "trainings": 0})
        entry["estimated_minutes"] += estimates[job.name]
        if job.left_out is None:
            entry.update({k: v for k, v in output.items() if k in MEASURE_KEYS or k in ("run", "refused")})
        elif "refused" in output:
            entry["left_out"][job.left_out] = {"refused": output["refused"]}
        entry["left_out"].update(output["left_out"])
        seconds = output["seconds"]
        entry["minutes"] += ((seconds["train"] or 0) + seconds["measure"]) / 60
        entry["trainings"] += 1
    return results


TARGETS = {"internal accuracy": ">= 0.95", "ieee8023 COVID-vs-rest AUROC": ">= 0.75", "called COVID": "<= 20%",
           "lungs hidden": "<= 0.60"}


def interval(entry: dict | None, percent: bool = False) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    show = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    bounds = f" [{show(entry['ci_low'])}, {show(entry['ci_high'])}]" if entry.get("ci_low") is not None else ""
    return show(entry["value"]) + bounds


def left_out_cell(entry: dict | None) -> str:
    if entry is None or "refused" in entry:
        return "-" if entry is None else "refused"
    return f"{interval(entry['called_covid'], percent=True)} (n={entry['images']}, {entry['near_duplicates_left_out']} dup.)"


def probe_cell(probe: dict | None) -> str:
    return "-" if probe is None else f"{probe['accuracy']:.1%} (n={probe['n_images']})"


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines)


def markdown_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The recipes side by side, one column each, with the issue's targets in the last column."""
    recipes = [r for r in args.recipes if r in results]
    got = [results[r] for r in recipes]

    def row(label: str, cell: Any, target: str = "") -> list[str]:
        return [label, *("refused" if "refused" in r else cell(r) for r in got), target]

    rows = [
        row("classes", lambda r: ",".join(r["internal"]["classes"])),
        row("internal test accuracy", lambda r: interval(r["internal"]["accuracy"]), TARGETS["internal accuracy"]),
        row("internal COVID sensitivity", lambda r: interval(r["internal"]["covid_sensitivity"])),
        row("internal COVID-vs-rest AUROC", lambda r: interval(r["internal"]["covid_vs_rest_auroc"])),
        row("ieee8023 COVID-vs-rest AUROC", lambda r: interval(r["ieee8023"]["auroc"]), TARGETS["ieee8023 COVID-vs-rest AUROC"]),
        row("  images (near-duplicates left out)",
            lambda r: f"{r['ieee8023']['images']} ({r['ieee8023']['near_duplicates_left_out']})"),
        *(row(f"left-out {key}: non-COVID called COVID", lambda r, key=key: left_out_cell(r["left_out"].get(key)),
              TARGETS["called COVID"]) for key in args.leave_out),
        row("Kermany test NORMAL called normal/other",
            lambda r: f"{interval(r['kermany_normals']['share'], percent=True)} (n={r['kermany_normals']['images']})"),
        row("audit AUROC as they are", lambda r: interval(r["audit"]["auroc"].get("original"))),
        row("audit AUROC lungs hidden", lambda r: interval(r["audit"]["auroc"].get("lungs_hidden")), TARGETS["lungs hidden"]),
        row("  audit images", lambda r: str(r["audit"]["images"])),
        row("source probe, COVID internal vs ieee8023 (chance 50%)", lambda r: probe_cell(r["source_probe"])),
        row("minutes measured (estimated), trainings",
            lambda r: f"{r['minutes']:.1f} ({r['estimated_minutes']:.1f}), {r['trainings']}"),
    ]
    headers = ["", *(f"{r} {RECIPES[r].name}" for r in recipes), "target"]
    refusals = [f"{r} refused: {results[r]['refused']}" for r in recipes if "refused" in results[r]]
    return "\n".join([markdown(headers, rows), *refusals])


def plan_table(jobs: list[Job], estimates: dict[str, float], parallel: int) -> str:
    """The trainings to run and their estimated minutes, per recipe and in all (wall time with ``parallel`` jobs)."""
    per_recipe: dict[str, list[Job]] = {}
    for job in jobs:
        per_recipe.setdefault(job.recipe, []).append(job)
    rows = [[recipe, str(len(group)), ", ".join(str(job.train_images) for job in group),
             f"{sum(estimates[job.name] for job in group):.0f}"] for recipe, group in per_recipe.items()]
    total = sum(estimates.values())
    footer = (f"estimated {total:.0f} min of work, about {total / parallel:.0f} min wall time with --jobs {parallel} on an "
              f"otherwise idle machine (load now {os.getloadavg()[0]:.1f} on {available_cpus()} CPUs)")
    return markdown(["recipe", "trainings", "training images", "estimated minutes"], rows) + "\n" + footer


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        started = time.time()
        jobs = plan_jobs(args)
        estimates = {job.name: estimated_minutes(job, args) for job in jobs}
        paths = sorted(set(evaluation_paths(args.out / "data", args.leave_out) + training_paths(jobs)))
        print(plan_table(jobs, estimates, args.jobs), file=sys.stderr)
        print(f"first {len(paths)} images are hashed and prepared: up to {len(paths) / PREPARE_IMAGES_PER_S / 60:.0f} min "
              "on a cold cache", file=sys.stderr)
        if args.plan:
            return 0
        warm_caches(paths, base_config(args).preprocessing)
        results = collect(jobs, run_jobs(jobs, args), estimates)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(results, args))
    print(f"\nwall time {(time.time() - started) / 60:.1f} min for {len(jobs)} jobs (--jobs {args.jobs}), preparation "
          "included", file=sys.stderr)
    write_json(args.json or args.out / "generalisation.json",
               {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "estimated_minutes": estimates, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
