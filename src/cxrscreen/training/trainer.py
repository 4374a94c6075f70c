"""The training loop: data -> leakage-free split -> cached inputs -> transfer learning -> calibrated checkpoint.

A run directory holds ``config.json`` (the resolved config), ``split.csv``, ``metrics.csv`` (one row per epoch),
``last.pt`` (after every completed epoch, for ``--resume``), ``best.pt`` (the model to use) and, once the run has
finished, ``summary.json``. Every file is written atomically, so a killed run leaves no half-written file and
resumes from its last completed epoch.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cxrscreen.data.splits import save_split, split_rows
from cxrscreen.data.stack import ImageStack
from cxrscreen.errors import RunDirError
from cxrscreen.guard.fit import GUARD_SIDES, fit_scored_guard
from cxrscreen.io_utils import atomic_write, write_json
from cxrscreen.metrics.classification import classification_report
from cxrscreen.models.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from cxrscreen.models.factory import create_model
from cxrscreen.run_dir import RunDir
from cxrscreen.training.config import TrainConfig, load_run_config
from cxrscreen.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    check_same_as_main,
    init_distributed,
    resolve_device,
    shutdown_distributed,
    wrap_model,
)
from cxrscreen.metrics.calibration import choose_temperature
from cxrscreen.metrics.reference import validation_reference
from cxrscreen.threads import available_cpus, configure_threads
from cxrscreen.training.adversary import source_adversary
from cxrscreen.training.augment import BatchAugment, augment_config
from cxrscreen.training.run_data import RunData, index_batches, prepare_run_data, split_run
from cxrscreen.training.sampler import BalancedSampler, balance_cells
from cxrscreen.training.shard_data import ShardStream
from cxrscreen.training.style import StyleAugment, insert_mixstyle
from cxrscreen.training.steps import class_weights, lr_at, predict_logits, rank_indices, to_input, train_step, validation_scores


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    test_metrics: dict[str, Any]
    seconds: float

    @property
    def checkpoint(self) -> Path:
        return RunDir(self.run_dir).best


@dataclass
class TrainState:
    """What ``last.pt`` carries besides the weights, to resume exactly where a run stopped."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] | None = None


def check_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite a run by accident, and to resume what cannot be resumed."""
    run_dir = cfg.run_dir
    files = RunDir(run_dir)
    if resume:
        if files.summary.exists():
            raise RunDirError(f"{run_dir}: this run has already finished; nothing to resume")
        return
    if files.summary.exists() and not overwrite:
        raise RunDirError(f"{run_dir}: holds a finished run; use --overwrite to replace it or --out for a new one")
    if files.last.exists() and not overwrite:
        raise RunDirError(f"{run_dir}: holds an unfinished run; use --resume to continue it or --overwrite")


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``metrics.csv`` (atomically) from the whole history."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(path, "w") as fh:
        fh.write(buffer.getvalue())


def build_meta(cfg: TrainConfig, data: RunData, metrics: dict[str, Any] | None = None) -> ModelMeta:
    return ModelMeta(
        arch=cfg.model,
        classes=list(data.label_set.classes),
        preprocessing=cfg.preprocessing,
        label_map=dict(data.label_set.extra),
        name=cfg.name or f"cxrscreen-{cfg.model}-{len(data.label_set.classes)}class",
        version=time.strftime("%Y%m%d"),
        train_summary=data.summary(),
        metrics=metrics or {},
        config=cfg.to_dict(),
    )


class Trainer:
    """One training run; construct with a config, call :meth:`run`."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.ctx = ctx
        self.progress = progress and ctx.is_main
        self.log = log if ctx.is_main else (lambda _msg: None)
        self.run_dir = cfg.run_dir
        self.files = RunDir(cfg.run_dir)

    # -- set-up -----------------------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed)
        # Rank 0's run directory decides: another machine's --out may be empty.
        has_last = broadcast_from_main(resume and self.files.last.is_file(), ctx)
        if ctx.is_main and not resume:
            for stale in (self.files.summary, self.files.last, self.files.best, self.files.metrics):
                stale.unlink(missing_ok=True)
        if ctx.local_rank == 0:  # each machine's --out holds the run's config and split; rank 0's the checkpoints
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.files.config, cfg.to_dict())
        self.load_data(self.files.split if resume else (Path(cfg.split) if cfg.split else None))
        num_classes = len(self.data.label_set.classes)
        torch.manual_seed(cfg.seed)  # the same initial weights whether the images were prepared now or cached
        self.build_model(pretrained=cfg.pretrained and not has_last)
        self.sampler = self.balanced_sampler()
        self.shards = ShardStream(self.data.train_images, cfg.batch_size, cfg.seed, self.data.collections,
                                  cfg.shard_workers) if cfg.shards else None
        draws = self.sampler.draws_per_image() if self.sampler is not None else None
        weights = broadcast_from_main(class_weights(self.data.train_targets, num_classes, draws) if ctx.is_main else None,
                                      ctx).to(ctx.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        self.adversarial = None  # the classifier + source head that trains, with --adversary source
        if cfg.adversary == "source":
            self.adversarial, self.loss_fn = source_adversary(
                self.model, self.loss_fn, self.data.train_targets, self.data.train_sources,
                list(self.data.label_set.classes), self.data.collections, cfg.adversary_weight, draws)
        trained = self.adversarial or self.model
        self.optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = TrainState(history=[])
        if has_last:
            self.load_last()
        self.net = wrap_model(trained, ctx)
        self.augment = BatchAugment(augment_config(cfg.augment), seed=cfg.seed)
        # Style augmentation (--style): each is the identity, drawing nothing, unless its kind is asked for.
        self.style = StyleAugment(cfg.style_config)
        self.mixstyle_generator = torch.Generator()
        self.mixstyle = insert_mixstyle(self.model.backbone, cfg.style_config, self.mixstyle_generator)

    def load_data(self, split_file: Path | None) -> None:
        """Records, split (read from ``split_file`` or made) and prepared images of every side."""
        cfg, ctx = self.cfg, self.ctx
        # Rank 0 makes (or reads) the split and hands it to the other ranks, which need neither its disk nor the
        # pHashes: machines without a shared filesystem train on the same split.
        run_split = split_run(cfg, split_file, self.log, self.progress) if ctx.is_main else None
        if ctx.distributed:  # the split as plain rows, made only when there is another rank to hand it to
            rows = broadcast_from_main(split_rows(run_split.split) if ctx.is_main else None, ctx)
            run_split = run_split if ctx.is_main else split_run(cfg, None, self.log, False, rows=rows)
            del rows  # a dict per image: not held while the images are prepared
        # Each machine's first rank records the split in its --out and prepares (caches) the images first.
        if ctx.local_rank == 0:
            save_split(run_split.split, self.files.split)
            self.data = prepare_run_data(cfg, run_split, self.log, self.progress)
        barrier(ctx)
        if ctx.local_rank != 0:
            self.data = prepare_run_data(cfg, run_split, self.log, False)
        check_same_as_main(self.data.fingerprint(), "the prepared images", ctx)

    def build_model(self, pretrained: bool) -> None:
        self.model = create_model(self.cfg.model, len(self.data.label_set.classes), pretrained=pretrained)
        self.model.to(self.ctx.device).to(memory_format=torch.channels_last)

    def load_last(self) -> None:
        payload = broadcast_from_main(read_checkpoint(self.files.last) if self.ctx.is_main else None, self.ctx)
        self.model.load_state_dict(payload["state_dict"])
        extra = payload.get("extra", {})
        self.optimizer.load_state_dict(extra["optimizer"])
        if self.adversarial is not None:
            self.adversarial.source_head.load_state_dict(extra["source_head"])
        self.state = TrainState(**extra["state"])
        self.log(f"resuming {self.run_dir} after epoch {self.state.epoch}")

    def balanced_sampler(self) -> BalancedSampler | None:
        """The ``--balance`` sampler of the training images (None: the plain shuffle); logs each cell's draws."""
        cfg, data = self.cfg, self.data
        if cfg.balance == "none":
            return None
        cells, names = balance_cells(cfg.balance, data.train_targets, data.train_sources,
                                     list(data.label_set.classes), data.collections)
        sampler = BalancedSampler(cells, names, cfg.balance_cap)
        self.log(f"--balance {cfg.balance} (each image drawn at most {cfg.balance_cap:g} times per epoch):")
        for line in sampler.describe():
            self.log(f"  {line}")
        return sampler

    def epoch_batches(self, epoch: int, steps: int):
        """This rank's (images uint8, classes, source ids) of each step of an epoch: streamed with --shards, else
        read from the prepared images (on disk) in :meth:`epoch_indices`' order."""
        if self.shards is not None:
            return ((b.images, b.targets, b.sources) for b in self.shards.batches(epoch))
        return index_batches(self.data, self.epoch_indices(epoch), self.cfg.batch_size, steps)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's training images of an epoch, in order: the balanced draw or the plain shuffle."""
        cfg, ctx = self.cfg, self.ctx
        if self.sampler is not None:
            return self.sampler.rank_indices(epoch, cfg.seed, ctx.rank, ctx.world_size)
        return rank_indices(len(self.data.train_images), epoch, cfg.seed, ctx.rank, ctx.world_size)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        start = time.time()
        steps_per_epoch = self.steps_per_epoch()
        total_steps = steps_per_epoch * cfg.epochs
        warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            try:
                train_stats = self.train_epoch(epoch, steps_per_epoch, total_steps, warmup)
                val = self.validate()
            except KeyboardInterrupt:
                if self.ctx.is_main:
                    print(f"interrupted in epoch {epoch}; epoch {self.state.epoch} is saved in {self.files.last}; "
                          f"continue with: cxrscreen train --resume {self.run_dir}", file=sys.stderr)
                raise
            self.record_epoch(epoch, train_stats, val)
            if self.state.epochs_without_improvement >= cfg.patience:
                self.log(f"early stop: {cfg.monitor} did not improve for {cfg.patience} epochs")
                break
        barrier(self.ctx)
        test_metrics = self.finish() if self.ctx.is_main else {}
        return TrainResult(self.run_dir, self.state.best_epoch, self.state.best_score, self.state.epoch, test_metrics, time.time() - start)

    def steps_per_epoch(self) -> int:
        if self.shards is not None:
            return self.shards.steps_per_epoch
        per_rank = math.ceil(len(self.data.train_images) / self.ctx.world_size)
        return max(1, per_rank // self.cfg.batch_size)

    def train_epoch(self, epoch: int, steps: int, total_steps: int, warmup: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout: same on resume
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 7 + ctx.rank)
        self.mixstyle_generator.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, ctx.rank]).generate_state(1)[0]))
        self.net.train()
        seen, loss_sum, tick = 0, 0.0, time.time()
        bar = tqdm(self.epoch_batches(epoch, steps), total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not self.progress, leave=False)
        for step, (images, y, sources) in enumerate(bar):
            if len(y) < 2:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at((epoch - 1) * steps + step, total_steps, warmup, cfg.lr)
            # Parameters (and noise) come from the CPU generator, so a seed gives the same batch on any device;
            # the pixel work (resampling, blur) runs where the model does.
            x = self.augment(to_input(torch.from_numpy(images), ctx.device), generator)
            sources = torch.from_numpy(sources)
            x = self.style(x, sources, generator).contiguous(memory_format=torch.channels_last)
            self.mixstyle.set_domains(sources)
            y = torch.from_numpy(y).to(ctx.device)
            if self.adversarial is not None:
                y = (y, sources.to(ctx.device))
            loss = train_step(self.net, self.optimizer, self.loss_fn, x, y, self.autocast)
            seen += len(sources)
            loss_sum += loss * len(sources)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.time() - tick):.1f}")
        totals = all_reduce_sum(torch.tensor([loss_sum, float(seen)], dtype=torch.float64), ctx)
        elapsed = time.time() - tick
        return {"train_loss": float(totals[0] / max(totals[1], 1)), "images_per_s": float(totals[1] / max(elapsed, 1e-9))}

    def autocast(self):
        if self.ctx.device.type == "cuda" and self.cfg.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def validate(self) -> dict[str, float]:
        """Validation scores, computed on each rank's share and gathered (every rank gets the same numbers)."""
        ctx = self.ctx
        share = np.arange(ctx.rank, len(self.data.val_images), ctx.world_size)
        logits = predict_logits(self.model, self.data.val_images.subset(share), ctx.device)
        gathered = [(share, logits)]
        if ctx.distributed:
            import torch.distributed as dist

            gathered = [None] * ctx.world_size
            dist.all_gather_object(gathered, (share, logits))
        order = np.concatenate([g[0] for g in gathered])
        all_logits = np.concatenate([g[1] for g in gathered])[np.argsort(order)]
        return validation_scores(all_logits, self.data.val_targets, len(self.data.label_set.classes))

    def record_epoch(self, epoch: int, train_stats: dict[str, float], val: dict[str, float]) -> None:
        cfg, state = self.cfg, self.state
        score = val.get(cfg.monitor, float("nan"))
        improved = np.isfinite(score) and score > state.best_score + 1e-6
        state.epoch = epoch
        if improved:
            state.best_score, state.best_epoch, state.epochs_without_improvement = float(score), epoch, 0
        else:
            state.epochs_without_improvement += 1
        row = {"epoch": epoch, **{k: round(v, 6) for k, v in train_stats.items()}}
        row.update({f"val_{k}": round(v, 6) for k, v in val.items()})
        row["lr"] = round(self.optimizer.param_groups[0]["lr"], 8)
        state.history.append(row)
        self.log(
            f"epoch {epoch}: loss {train_stats['train_loss']:.4f}, val acc {val.get('accuracy', float('nan')):.4f}, "
            f"val {cfg.monitor} {score:.4f}{' (best)' if improved else ''}, {train_stats['images_per_s']:.1f} img/s"
        )
        if self.ctx.is_main:
            # best, then last (the resume point), then the log: a kill between two writes loses nothing.
            meta = build_meta(cfg, self.data, {"validation": val, "epoch": epoch})
            if improved:
                save_checkpoint(self.files.best, self.model, meta)
            extra = {"optimizer": self.optimizer.state_dict(), "state": state.__dict__}
            if self.adversarial is not None:
                extra["source_head"] = self.adversarial.source_head.state_dict()
            save_checkpoint(self.files.last, self.model, meta, extra=extra)
            write_metrics_csv(self.files.metrics, state.history)
        barrier(self.ctx)

    # -- after training ---------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Calibrate, fit the OOD guard, store the reference, training hashes and test metrics in ``best.pt``; write
        the summary."""
        payload = read_checkpoint(self.files.best)
        self.model.load_state_dict(payload["state_dict"])
        meta = ModelMeta.from_dict(payload["meta"])
        device = self.ctx.device
        val_logits = predict_logits(self.model, self.data.val_images, device)
        calibration = choose_temperature(val_logits, self.data.val_targets)
        meta.temperature = calibration.temperature
        if calibration.note:
            self.log(f"warning: {calibration.note}")
        inputs = None if self.cfg.shards else ImageStack.concat([self.data.guard_inputs[s] for s in GUARD_SIDES])
        meta.ood, guard_scores = fit_scored_guard([r for side in GUARD_SIDES for r in self.data.records[side]],
                                                  self.data.hashes, self.cfg.dedup_distance, thumbnails=inputs)
        # The validation images' guard scores out of fold (last in the fit's order): what it gives unseen images.
        meta.reference = validation_reference(val_logits / meta.temperature, meta.classes,
                                              guard_scores[-len(val_logits):], meta.ood["threshold"]).to_dict()
        meta.train_hashes = list(self.data.train_hashes)
        test_logits = predict_logits(self.model, self.data.test_images, device)
        test = held_out_report(test_logits / meta.temperature, self.data.test_targets, meta.classes, self.cfg.seed)
        meta.metrics = {"validation": validation_scores(val_logits, self.data.val_targets, len(meta.classes)),
                        "test": test, "best_epoch": self.state.best_epoch, "calibration": calibration.to_dict()}
        save_checkpoint(self.files.best, self.model, meta)
        summary = {
            "run_dir": str(self.run_dir),
            "best_epoch": self.state.best_epoch,
            "best_score": self.state.best_score,
            "monitor": self.cfg.monitor,
            "epochs_run": self.state.epoch,
            "temperature": meta.temperature,
            "calibration": calibration.to_dict(),
            "data": meta.train_summary,
            "test": test,
        }
        write_json(self.files.summary, summary)
        return test


def held_out_report(logits: np.ndarray, targets: np.ndarray, classes: list[str], seed: int) -> dict[str, Any]:
    """Test-split metrics with bootstrap CIs, as stored in the checkpoint and the run summary."""
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    report = classification_report(targets, probs, classes, n_resamples=1000, seed=seed)
    covid = report.covid_vs_rest
    return {**report.multiclass.to_dict(), **({"covid_vs_rest": covid.to_dict()} if covid else {})}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a classifier as ``cfg`` says (under torchrun: one rank of a DDP run)."""
    ctx = init_distributed(cfg.device)
    try:
        if ctx.is_main:
            check_run_dir(cfg, resume, overwrite)
        # Ranks on one machine share its CPUs: without an explicit count, each gets its part.
        threads = cfg.num_threads or (max(1, available_cpus() // ctx.world_size) if ctx.distributed else None)
        configure_threads(threads)
        trainer = Trainer(cfg, ctx, progress, log)
        trainer.setup(resume)
        return trainer.run()
    finally:
        shutdown_distributed()


def state_from_metrics(path: Path, monitor: str) -> TrainState:
    """The training state as ``metrics.csv`` records it: last epoch, and the best epoch by ``monitor``."""
    if not path.is_file():
        raise RunDirError(f"{path.parent}: no {path.name}, so the best epoch is unknown")
    with path.open(newline="") as fh:
        history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    if not history:
        raise RunDirError(f"{path}: no epoch recorded")
    scores = [row.get(f"val_{monitor}", -math.inf) for row in history]
    best = int(np.argmax(scores))
    return TrainState(epoch=int(history[-1]["epoch"]), best_score=float(scores[best]),
                      best_epoch=int(history[best]["epoch"]), epochs_without_improvement=len(history) - 1 - best,
                      history=history)


def finish_run(run_dir: str | Path, device: str = "auto", num_threads: int | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> TrainResult:
    """Complete a run that stopped after writing ``best.pt`` but before its after-training steps (killed by a job's
    time limit, say): calibrate, fit the OOD guard, store the training hashes and test metrics in ``best.pt``, and
    write ``summary.json``. The weights are those of the saved best epoch; no training happens. ``device`` and
    ``num_threads`` are this machine's (the run may have trained on another)."""
    start = time.time()
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    cfg = load_run_config(run_dir)
    cfg.device, cfg.num_threads = device, num_threads
    if files.summary.exists():
        raise RunDirError(f"{run_dir}: this run has already finished")
    if not files.best.is_file() or not files.split.is_file():
        raise RunDirError(f"{run_dir}: needs {files.best.name} and {files.split.name} to be finished")
    state = state_from_metrics(files.metrics, cfg.monitor)
    ctx = DistContext(0, 1, 0, resolve_device(cfg.device))
    configure_threads(cfg.num_threads)
    trainer = Trainer(cfg, ctx, progress, log)
    trainer.load_data(files.split)  # the saved split; config.json is left as the run wrote it
    trainer.build_model(pretrained=False)  # finish() loads best.pt's weights into it
    trainer.state = state
    log(f"finishing {run_dir} after epoch {state.epoch} (best epoch {state.best_epoch})")
    test = trainer.finish()
    return TrainResult(run_dir, state.best_epoch, state.best_score, state.epoch, test, time.time() - start)
