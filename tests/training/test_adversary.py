"""The source adversary: its refusal where collections do not hold several classes, and the reversed gradient."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrscreen.cli import main
from cxrscreen.errors import ConfigError
from cxrscreen.models.checkpoint import read_checkpoint
from cxrscreen.models.registry import create_model
from cxrscreen.training import trainer as trainer_module
from cxrscreen.training.adversary import AdversarialClassifier, AdversarialLoss, check_sources_hold_classes
from cxrscreen.training.sampler import BalancedSampler
from cxrscreen.training.style import MixStyleHandle, StyleAugment

CLASSES = ["covid", "normal", "viral"]
EPOCHS = 2


def labelled(cells: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and source ids of one image per (class, source) pair given."""
    return np.array([c for c, _ in cells]), np.array([s for _, s in cells])


def test_refused_when_each_source_is_one_class() -> None:
    targets, sources = labelled([(0, 0), (0, 0), (1, 1), (2, 2)])
    with pytest.raises(ConfigError) as error:
        check_sources_hold_classes(targets, sources, CLASSES, ["db_covid", "rsna", "kermany"])
    message = str(error.value)
    assert "found 0" in message and "db_covid: covid; rsna: normal; kermany: viral" in message
    assert "\n" not in message


def test_refused_with_one_mixed_source_and_accepted_with_two() -> None:
    one_mixed = labelled([(0, 0), (1, 0), (1, 1), (2, 2)])
    with pytest.raises(ConfigError, match="found 1 .*a: covid, normal; b: normal; c: viral"):
        check_sources_hold_classes(*one_mixed, CLASSES, ["a", "b", "c"])
    two_mixed = labelled([(0, 0), (1, 0), (1, 1), (2, 1), (2, 2)])
    check_sources_hold_classes(*two_mixed, CLASSES, ["a", "b", "c"])


def backbone_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None])


def test_source_loss_reaches_the_backbone_reversed() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=False).eval()  # eval: no dropout, fixed batch norm
    net = AdversarialClassifier(model, num_sources=2)
    x = torch.rand(4, 1, 32, 32)
    sources = torch.tensor([0, 1, 0, 1])
    source_loss = nn.CrossEntropyLoss()

    source_loss(net(x)[1], sources).backward()
    reversed_backbone = backbone_grads(model)
    reversed_head = [p.grad.clone() for p in net.source_head.parameters()]
    net.zero_grad(set_to_none=True)
    # The same loss without the reversal layer: the head's gradient is the same, the backbone's the opposite.
    source_loss(net.source_head(model.features(x)), sources).backward()
    plain_backbone = backbone_grads(model)
    assert plain_backbone.abs().max() > 0
    assert torch.allclose(reversed_backbone, -plain_backbone, atol=1e-7)
    for reversed_grad, param in zip(reversed_head, net.source_head.parameters()):
        assert torch.allclose(reversed_grad, param.grad)


def test_loss_adds_the_weighted_source_loss() -> None:
    torch.manual_seed(0)
    logits, source_logits = torch.randn(4, 3), torch.randn(4, 2)
    y, s = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 0])
    ce = nn.CrossEntropyLoss()
    total = AdversarialLoss(ce, ce, weight=0.25)((logits, source_logits), (y, s))
    assert torch.isclose(total, ce(logits, y) + 0.25 * ce(source_logits, s))


@pytest.fixture(scope="module")
def two_collections(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 images per class of the Radiography DB (covid, normal, viral) and 8 normal + 8 viral children of Kermany's
    test split (not pictures of the DB's): two collections holding two or more classes each."""
    from subsets import link_subset

    root = tmp_path_factory.mktemp("two")
    radiography = link_subset(shared_data / "COVID-19_Radiography_Dataset", root / "COVID-19_Radiography_Dataset", 8)
    kermany = root / "chest_xray"
    for folder, pattern in (("NORMAL", "*.jpg"), ("PNEUMONIA", "*_virus_*.jpg")):
        link_subset(shared_data / "chest_xray" / "test", kermany / "test", 8, f"{folder}/{pattern}")
    return [radiography, kermany]


def run_args(collections: list[Path], out: Path) -> list[str]:
    return ["train", *[a for path in collections for a in ("--data", str(path))], "--img-size", "64",
            "--epochs", str(EPOCHS), "--batch-size", "8", "--patience", "99", "--out", str(out), "--quiet",
            "--num-threads", "1", "--balance", "class_source", "--adversary", "source", "--adversary-weight", "0.2",
            "--style", "tone,histmatch,mixstyle"]


@pytest.fixture(scope="module")
def balanced_run(two_collections: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """A run with every option against source confounds, its printed log, and what the trainer handed to the
    sampler, the pixel style augmentation and MixStyle (recorded by spies)."""
    out = tmp_path_factory.mktemp("balanced") / "run"
    calls: dict[str, list] = {"draw": [], "style": [], "mixstyle": []}
    draw, style, domains = BalancedSampler.rank_indices, StyleAugment.__call__, MixStyleHandle.set_domains

    def spy_draw(self, epoch, *args):
        calls["draw"].append(epoch)
        return draw(self, epoch, *args)

    def spy_style(self, images, source_ids, generator):
        calls["style"].append(source_ids.clone())
        return style(self, images, source_ids, generator)

    def spy_domains(self, source_ids):
        calls["mixstyle"].append(source_ids.clone())
        return domains(self, source_ids)

    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(buffer):
        patch.setattr(BalancedSampler, "rank_indices", spy_draw)
        patch.setattr(StyleAugment, "__call__", spy_style)
        patch.setattr(MixStyleHandle, "set_domains", spy_domains)
        assert main(run_args(two_collections, out)) == 0
    return out, buffer.getvalue(), calls


def test_balanced_adversarial_styled_run_trains_and_predicts(balanced_run: tuple[Path, str, dict], capsys) -> None:
    out, log, calls = balanced_run
    assert "--balance class_source" in log and "viral/kermany:" in log and "draws per epoch" in log
    config = json.loads((out / "config.json").read_text())
    assert (config["balance"], config["adversary"], config["adversary_weight"]) == ("class_source", "source", 0.2)
    assert config["style"] == ["histmatch", "tone", "mixstyle"]
    # Each epoch's order came from the balanced draw; each batch's source ids reached both style augmentations.
    assert calls["draw"] == list(range(1, EPOCHS + 1))
    assert calls["style"] and len(calls["style"]) == len(calls["mixstyle"])
    assert all(torch.equal(a, b) for a, b in zip(calls["style"], calls["mixstyle"]))
    assert any(len(ids.unique()) == 2 for ids in calls["style"])
    # The source head trains beside the classifier and is kept for resuming, but is no part of the model.
    assert "source_head" in read_checkpoint(out / "last.pt")["extra"]
    assert not any(key.startswith("source_head") for key in read_checkpoint(out / "best.pt")["state_dict"])
    image = next(Path(json.loads((out / "config.json").read_text())["data"][1]).glob("test/NORMAL/*.jpg"))
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(out / "best.pt"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["label"] in CLASSES


def test_balanced_adversarial_styled_run_resumes_exactly(balanced_run: tuple[Path, str, dict], two_collections: list[Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = balanced_run[0]
    out = tmp_path / "run"
    record_epoch = trainer_module.Trainer.record_epoch

    def record_then_interrupt(self, epoch: int, *args) -> None:
        record_epoch(self, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "record_epoch", record_then_interrupt)
    assert main(run_args(two_collections, out)) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    rows = [[{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader((run / "metrics.csv").open())]
            for run in (out, reference)]
    assert rows[0] == rows[1] and len(rows[0]) == EPOCHS
    for name in ("best.pt", "last.pt"):
        resumed, uninterrupted = read_checkpoint(out / name), read_checkpoint(reference / name)
        for key, value in uninterrupted["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), f"{name}: {key}"
    for key, value in read_checkpoint(reference / "last.pt")["extra"]["source_head"].items():
        assert torch.equal(read_checkpoint(out / "last.pt")["extra"]["source_head"][key], value), key


def test_adversary_refused_on_a_run_whose_collections_are_single_class(shared_data: Path, tmp_path: Path, capsys) -> None:
    from subsets import link_subset

    # Radiography DB COVID only (covid) and Kermany normals only (normal): each collection is one class.
    covid = link_subset(shared_data / "COVID-19_Radiography_Dataset", tmp_path / "COVID-19_Radiography_Dataset", 12, "COVID/images/*.jpg")
    kermany = link_subset(shared_data / "chest_xray" / "test", tmp_path / "chest_xray" / "test", 12, "NORMAL/*.jpg").parent
    code = main(["train", "--data", str(covid), "--data", str(kermany), "--classes", "covid,other", "--img-size", "64",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", "--adversary", "source"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--adversary source needs at least 2" in err and "kermany: other" in err and "radiography_db: covid" in err
    assert "Traceback" not in err
