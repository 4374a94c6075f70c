"""``report.html``: everything known about a training run on one self-contained page.

:func:`write_report` reads what the other commands left in the run directory and embeds every figure as a
base64 PNG, so the file can be mailed or archived alone:

- ``best.pt`` (model, preprocessing, classes, training-data summary) and ``summary.json`` / ``config.json``;
- ``metrics.csv`` (training curves);
- ``eval/metrics.json`` and the figures it names (``cxrscreen evaluate``): internal and external metric tables with
  95% CIs, confusion matrices, ROC and reliability plots; before any ``evaluate``, the test split's metrics that
  ``train`` measured (``summary.json``, else ``best.pt``);
- ``audit/audit.json`` (``cxrscreen audit``): the shortcut audit;
- ``adapt.json`` and ``learning_curve.png`` (``cxrscreen adapt``): before/after on the site, threshold, learning curve;
- ``eval/predictions.csv``: Grad-CAM overlays of correct and wrong predictions per class (computed here).

A part whose file is missing becomes a one-line hint naming the command that produces it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from cxrscreen import SCREENING_NOTICE
from cxrscreen.errors import CxrError, RunDirError
from cxrscreen.evaluation import report_template as html
from cxrscreen.evaluation.tables import ADAPT_FIGURE_ROWS
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.io_utils import write_text
from cxrscreen.models.checkpoint import ModelMeta, read_checkpoint
from cxrscreen.run_dir import AUDIT_FILE, PREDICTIONS_CSV, RunDir

METRIC_ROWS = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1"),
               ("macro-AUROC", "macro_auroc"))
FIGURES = (("confusion_matrix", "confusion matrix"), ("roc", "ROC"), ("reliability", "reliability"))


def fmt(entry: dict | None) -> str:
    """``0.912 [0.899, 0.925]`` from a serialised Interval; ``-`` when missing or undefined."""
    if not entry or entry.get("value") is None:
        return "-"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def find_figure(path_text: str, eval_dir: Path) -> Path | None:
    """A figure named in metrics.json: as written, or found again under ``eval_dir`` if the run was moved."""
    path = Path(path_text)
    for candidate in (path, eval_dir / path.name, eval_dir / path.parent.name / path.name):
        if candidate.is_file():
            return candidate
    return None


# -- sections -------------------------------------------------------------------------------------------------


def overview_section(meta, summary: dict | None) -> str:
    pp = meta.preprocessing
    rows = [
        ["model", f"{meta.name} v{meta.version}"],
        ["architecture", meta.arch],
        ["classes", ", ".join(meta.classes)],
        ["input", f"{pp.img_size} px, lung mode {pp.lung_mode}, equalisation {pp.equalize}"],
        ["temperature", f"{meta.temperature:.3f}"],
    ]
    calibration = (summary or {}).get("calibration") or meta.metrics.get("calibration") or {}
    if calibration.get("note"):
        rows.append(["calibration", calibration["note"]])
    if summary:
        rows.append(["best epoch", f"{summary.get('best_epoch')} of {summary.get('epochs_run')} "
                                   f"({summary.get('monitor')} {summary.get('best_score', float('nan')):.4f})"])
    return html.section("overview", "Model", html.key_value_table(rows))


def data_section(train_summary: dict, config: dict) -> str:
    if not train_summary:
        return html.section("data", "Training data", html.paragraph("The model carries no training-data summary."))
    parts = [html.paragraph("Data: " + ", ".join(map(str, train_summary.get("data") or config.get("data") or [])))]
    per_split = train_summary.get("images_per_split", {})
    classes = train_summary.get("classes", [])
    rows = [[side, str(sum(counts.values())), *(str(counts.get(c, 0)) for c in classes)] for side, counts in per_split.items()]
    parts.append(html.table(["split", "images", *classes], rows))
    sources = train_summary.get("sources", {})
    if sources:
        parts.append(html.table(["source", "images"], [[s, str(n)] for s, n in sources.items()]))
    rule = train_summary.get("split_rule")
    if rule:
        # A training run has fractions, an adaptation folds: only the settings the run has are named.
        settings = ", ".join(f"{key} {config[key]}" for key in ("seed", "fractions", "folds") if config.get(key) is not None)
        parts.append(html.paragraph(f"Split rule: {rule}" + (f" ({settings})." if settings else ".")))
    dropped = train_summary.get("dropped_labels") or {}
    if dropped:
        parts.append(html.paragraph("Dropped (no class in this task): " + ", ".join(f"{k} {v}" for k, v in dropped.items())))
    if train_summary.get("bad_images"):
        parts.append(html.paragraph(f"Unreadable images skipped: {train_summary['bad_images']}"))
    return html.section("data", "Training data and split", "\n".join(parts))


def curves_section(history: list[dict[str, str]], adapted: bool = False) -> str:
    """Training curves from metrics.csv; nothing for an adaptation, which fine-tunes in folds and shows its
    learning curve instead (:func:`adaptation_section`)."""
    if not history and adapted:
        return ""
    if not history:
        return html.section("curves", "Training curves", html.paragraph("No metrics.csv in the run directory.", "muted"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(name: str) -> np.ndarray:
        return np.array([float(row[name]) if row.get(name) not in (None, "") else np.nan for row in history])

    epochs = column("epoch")
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(epochs, column("train_loss"), marker="o")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    for name in [k for k in history[0] if k.startswith("val_")]:
        val_ax.plot(epochs, column(name), marker="o", label=name[4:])
    val_ax.set_xlabel("epoch")
    val_ax.set_ylabel("validation")
    val_ax.set_ylim(0, 1.02)
    val_ax.legend(fontsize=8)
    return html.section("curves", "Training curves", html.figure(figure_png(fig), "training loss and validation metrics", "wide"))


def collection_block(collection: dict, eval_dir: Path) -> str:
    title = f"{collection['name']} ({collection['kind']})"
    parts = [f"<h3>{html.escape(title)}</h3>",
             html.paragraph(f"{collection['images_evaluated']} images evaluated of {collection['images_listed']} listed.")]
    if collection.get("left_out_near_duplicates") is not None:
        parts.append(html.paragraph(f"Left out {collection['left_out_near_duplicates']} near-duplicate(s) of the "
                                    "model's training images."))
    for note in collection.get("notes", []):
        parts.append(html.paragraph(f"Note: {note}", "muted"))
    multi, covid, cal = collection.get("multiclass"), collection.get("covid_vs_rest"), collection.get("calibration")
    rows = [[label, fmt(multi.get(key))] for label, key in METRIC_ROWS] if multi else []
    if covid:
        rows += [["COVID-vs-rest AUROC", fmt(covid["auroc"])], ["COVID sensitivity", fmt(covid["sensitivity"])],
                 ["COVID specificity", fmt(covid["specificity"])]]
    if cal:
        rows.append(["ECE (T=1 -> scaled)", f"{cal.get('ece_t1') or float('nan'):.3f} -> {cal.get('ece_scaled') or float('nan'):.3f}"])
    if rows:
        parts.append(html.table(["metric", "value [95% CI]"], rows))
    if multi:
        classes = multi["classes"]
        metrics = list(next(iter(multi["per_class"].values())).keys()) if multi["per_class"] else []
        per_class = [[c, str(multi["support"][c]), *(fmt(multi["per_class"][c][m]) for m in metrics)] for c in classes]
        parts.append(html.table(["class", "n", *metrics], per_class))
        confusion = [[c, *map(str, row)] for c, row in zip(classes, multi["confusion_matrix"])]
        parts.append(html.table(["true \\ predicted", *classes], confusion))
    images = []
    for key, caption in FIGURES:
        found = find_figure(collection.get("figures", {}).get(key, ""), eval_dir) if collection.get("figures", {}).get(key) else None
        if found is not None:
            images.append(html.figure(found.read_bytes(), caption))
    if images:
        parts.append('<div class="figures">' + "".join(images) + "</div>")
    return "\n".join(parts)


def training_test_block(test: dict, eval_dir: Path) -> str:
    """The run's test split as ``train`` measured it at the end (best epoch, temperature applied)."""
    collection = {"name": "test split", "kind": "measured by train", "images_evaluated": test.get("n_images"),
                  "images_listed": test.get("n_images"), "multiclass": test, "covid_vs_rest": test.get("covid_vs_rest")}
    return collection_block(collection, eval_dir)


def evaluation_section(metrics: dict | None, eval_dir: Path, training_test: dict | None = None) -> str:
    """``eval/metrics.json`` when ``evaluate`` wrote it; else the test split as ``train`` measured it
    (``training_test``, from summary.json or the checkpoint); else a hint."""
    evaluate_hint = "run `cxrscreen evaluate --model RUN_DIR [--external PATH ...]`"
    if metrics is None and training_test:
        note = (f"The run's held-out test split, measured at the end of training (95% CIs from bootstrap resamples). "
                f"No external collection evaluated yet: {evaluate_hint}.")
        return html.section("evaluation", "Evaluation",
                            html.paragraph(note, "muted") + "\n" + training_test_block(training_test, eval_dir))
    if metrics is None:
        hint = f"No evaluation yet: {evaluate_hint}."
        return html.section("evaluation", "Evaluation", html.paragraph(hint, "muted"))
    parts = [html.paragraph(f"95% CIs from {metrics['bootstrap']['resamples']} bootstrap resamples "
                            f"(seed {metrics['bootstrap']['seed']}), resampling patients where known.", "muted")]
    parts += [collection_block(c, eval_dir) for c in metrics["collections"]]
    if metrics.get("comparison"):
        rows = [[r["name"], str(r["images"]), fmt(r["auroc"]), fmt(r["sensitivity"]), fmt(r["specificity"]),
                 fmt(r["macro_f1"]), fmt(r["auroc_drop"])] for r in metrics["comparison"]]
        parts.append("<h3>Internal vs external</h3>")
        parts.append(html.table(["collection", "n", "AUROC covid-vs-rest", "sensitivity", "specificity", "macro-F1",
                                 "AUROC drop"], rows))
    return html.section("evaluation", "Evaluation", "\n".join(parts))


def adaptation_section(adapt: dict | None, run_dir: Path) -> str:
    """``adapt.json`` (``cxrscreen adapt``): the parent's figures and the adapted model's (out of fold) on the same
    site images, the operating threshold and the learning curve; nothing for a model that was not adapted."""
    if adapt is None:
        return ""

    def cell(figures: dict | None, key: str) -> str:
        low, high = (figures or {}).get(f"{key}_ci") or (None, None)
        return fmt({"value": (figures or {}).get(key), "ci_low": low, "ci_high": high})

    positive, images, threshold = adapt["positive_class"], adapt["images"], adapt["threshold"]
    parts = [html.paragraph(f"Parent {adapt['parent']['name']} v{adapt['parent']['version']} adapted to "
                            f"{', '.join(adapt['data'])}: {images['used']} images, {adapt['folds']['k']} folds by "
                            f"{adapt['folds']['grouped_by']}; {images.get('left_out_near_duplicates') or 0} near-duplicate(s) "
                            "of the parent's training images left out."),
             html.table(["metric", "before (parent)", "after (out of fold)"],
                        [[label.format(positive=positive), cell(adapt["before"], key), cell(adapt["after"], key)]
                         for label, key in ADAPT_FIGURE_ROWS]),
             html.paragraph(f"Operating threshold p({positive}) >= {threshold['value']:.3f}: sensitivity "
                            f"{cell(threshold, 'sensitivity')}, specificity {cell(threshold, 'specificity')} (out of fold).")]
    if adapt.get("learning_curve"):
        parts.append(html.table(["labelled images per class", f"AUROC {positive}-vs-rest"],
                                [[str(row["size"]), cell(row, "auroc")] for row in adapt["learning_curve"]]))
    curve = RunDir(run_dir).learning_curve
    if curve.is_file():
        parts.append(html.figure(curve.read_bytes(), "learning curve"))
    return html.section("adaptation", "Adaptation to a site", "\n".join(parts))


def audit_section(audit: dict | None) -> str:
    if audit is None:
        hint = "No shortcut audit yet: run `cxrscreen audit --model RUN_DIR --data PATH`."
        return html.section("audit", "Shortcut audit", html.paragraph(hint, "muted"))
    titles = {"original": "as they are", "lungs_hidden": "lungs hidden", "lungs_only": "only lungs kept"}
    rows = []
    for name, score in audit["scores"].items():
        covid, multi = score.get("covid_vs_rest") or {}, score.get("multiclass") or {}
        rows.append([titles.get(name, name), fmt(covid.get("auroc")), fmt(covid.get("sensitivity")),
                     fmt(multi.get("macro_f1")), fmt(multi.get("accuracy"))])
    parts = [html.paragraph(f"Verdict: {audit['verdict']}", "verdict"),
             html.paragraph(f"{audit['images_audited']} images of {', '.join(audit['data'])}; lungs not found on "
                            f"{audit['lungs_not_found']}; lung mask dilated by {audit['mask_dilation']:.0%} of the side."),
             html.table(["images", "AUROC covid-vs-rest", "sensitivity", "macro-F1", "accuracy"], rows)]
    shares = audit.get("gradcam_lung_share") or {}
    if shares:
        share_rows = [[k, "-" if v is None else f"{v:.0%}", str(audit["gradcam_images"].get(k, ""))] for k, v in shares.items()]
        parts.append(html.table(["true class", "Grad-CAM mass inside the lungs", "images"], share_rows))
        if audit.get("lung_area_share") is not None:
            parts.append(html.paragraph(f"The lungs cover {audit['lung_area_share']:.0%} of the network input: a map "
                                        "spread evenly would put that share inside them.", "muted"))
    probe = audit.get("source_probe")
    if probe:
        parts.append(html.paragraph(
            f"Source probe: {probe['accuracy']:.1%} cross-validated accuracy telling {len(probe['sources'])} sources "
            f"apart from the model's features, against {probe['majority_rate']:.1%} by always guessing the largest."))
    for note in audit.get("notes", []):
        parts.append(html.paragraph(f"Note: {note}", "muted"))
    return html.section("audit", "Shortcut audit", "\n".join(parts))


def pick_examples(rows: list[dict[str, str]], classes: list[str], per_class: int) -> list[tuple[dict, str, str, float, bool]]:
    """Per true class, the ``per_class`` most confident correct and wrong predictions:
    (row, true class, predicted class, its probability, correct)."""
    picked = []
    for name in classes:
        scored = []
        for row in rows:
            if row.get("class") != name:
                continue
            probs = np.array([float(row[f"p_{c}"]) for c in classes])
            scored.append((row, name, classes[int(probs.argmax())], float(probs.max())))
        for correct in (True, False):
            chosen = sorted((s for s in scored if (s[2] == name) == correct), key=lambda s: -s[3])[:per_class]
            picked += [(*s, correct) for s in chosen]
    return picked


def gradcam_section(run_dir: Path, eval_dir: Path, per_class: int, log: Callable[[str], None]) -> str:
    rows = read_csv(eval_dir / PREDICTIONS_CSV)
    if not rows or per_class == 0:
        hint = "No predictions to explain: run `cxrscreen evaluate --model RUN_DIR` first."
        return html.section("gradcam", "Grad-CAM examples", html.paragraph(hint, "muted"))
    predictor = load_predictor(run_dir, backend="torch")  # for Grad-CAM: export nothing
    parts = [html.paragraph("Where the evidence for the predicted class lies (Grad-CAM), on the most confident correct "
                            "and wrong predictions of each class of the first evaluated collection (eval/predictions.csv); "
                            "wrong ones are captioned in red.", "muted")]
    for name in predictor.classes:
        cells = []
        for row, true, predicted, prob, correct in pick_examples(rows, predictor.classes, per_class):
            if true != name:
                continue
            try:
                explanation = predictor.explain(row["path"], target=predicted)
            except CxrError as exc:
                log(f"{row['path']}: no Grad-CAM ({exc})")
                continue
            caption = f"{Path(row['path']).name}: {true} -> {predicted} ({prob:.2f})"
            cells.append(html.figure(explanation.overlay_png, caption, None if correct else "wrong"))
        if cells:
            parts.append(f"<h3>true class {html.escape(name)}</h3><div class=\"grid\">{''.join(cells)}</div>")
    return html.section("gradcam", "Grad-CAM examples", "\n".join(parts))


def build_report(run_dir: str | Path, gradcam_per_class: int = 3, log: Callable[[str], None] = print) -> str:
    """The report of ``run_dir`` as an HTML string (see the module docstring for what it reads)."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    if not files.is_run():
        raise RunDirError(f"{run_dir}: not a run directory (no {files.best.name})")
    meta = ModelMeta.from_dict(read_checkpoint(files.best)["meta"])
    summary = read_json(files.summary)
    config = read_json(files.config) or meta.config or {}
    eval_dir = files.eval_dir
    audit = next((a for a in (read_json(p) for p in (files.audit, run_dir / AUDIT_FILE)) if a is not None), None)
    body = "\n".join([
        f"<h1>cxrscreen report: {html.escape(meta.name)}</h1>",
        html.paragraph(f"Run directory {run_dir.resolve()}", "muted"),
        html.paragraph(SCREENING_NOTICE, "notice"),
        overview_section(meta, summary),
        data_section(meta.train_summary or (summary or {}).get("data", {}), config),
        curves_section(read_csv(files.metrics), adapted=files.adapt.is_file()),
        adaptation_section(read_json(files.adapt), run_dir),
        evaluation_section(read_json(files.eval_metrics), eval_dir,
                           (summary or {}).get("test") or meta.metrics.get("test")),
        audit_section(audit),
        gradcam_section(run_dir, eval_dir, gradcam_per_class, log),
    ])
    return html.page(f"cxrscreen report: {meta.name}", body)


def write_report(run_dir: str | Path, out: str | Path | None = None, gradcam_per_class: int = 3,
                 log: Callable[[str], None] = print) -> Path:
    """Write the run's report (default ``RUN_DIR/report.html``) atomically and return its path."""
    path = Path(out) if out else RunDir(run_dir).report
    write_text(path, build_report(run_dir, gradcam_per_class, log))
    return path

