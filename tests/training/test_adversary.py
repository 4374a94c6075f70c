"""The class-conditional source adversary: its refusal where each class comes from one collection, its loss counting
only the classes drawn from several collections, and the reversed gradient."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrscreen.cli import main
from cxrscreen.errors import ConfigError
from cxrscreen.models.checkpoint import read_checkpoint
from cxrscreen.models.factory import create_model
from cxrscreen.training import trainer as trainer_module
from cxrscreen.training.adversary import (AdversarialClassifier, AdversarialLoss, ConditionalSourceLoss,
                                          check_mixed_classes, source_cell_weights)
from cxrscreen.training.sampler import BalancedSampler
from cxrscreen.training.style import MixStyleHandle, StyleAugment

CLASSES = ["covid", "normal", "viral"]
BINARY = ["covid", "other"]
EPOCHS = 2


def labelled(cells: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and source ids of one image per (class, source) pair given."""
    return np.array([c for c, _ in cells]), np.array([s for _, s in cells])


def test_refused_when_each_class_is_one_collection() -> None:
    targets, sources = labelled([(0, 0), (0, 0), (1, 1), (2, 2)])
    with pytest.raises(ConfigError) as error:
        check_mixed_classes(targets, sources, CLASSES, ["db_covid", "rsna", "kermany"])
    message = str(error.value)
    assert "found none (covid: db_covid; normal: rsna; viral: kermany)" in message
    assert "\n" not in message
    # A collection holding two classes does not help while each class still comes from one collection.
    with pytest.raises(ConfigError, match="found none .covid: a; normal: a; viral: b"):
        check_mixed_classes(*labelled([(0, 0), (1, 0), (2, 1)]), CLASSES, ["a", "b"])


def test_accepted_on_the_binary_task_with_other_from_several_collections() -> None:
    # covid only in the Radiography DB; other in it and in two single-class collections.
    targets, sources = labelled([(0, 0)] * 4 + [(1, 0)] * 6 + [(1, 1)] * 3 + [(1, 2)])
    assert check_mixed_classes(targets, sources, BINARY, ["radiography_db", "tb", "jsrt"]) == ["other"]
    weights = source_cell_weights(targets, sources, 2, 3)
    assert torch.equal(weights[0], torch.zeros(3))  # covid: one collection, never in the source loss
    # other: each collection weighs the same in total (count x weight), and the weighted images sum to the 10.
    totals = weights[1] * torch.tensor([6.0, 3.0, 1.0])
    assert torch.allclose(totals, torch.full((3,), 10 / 3))


def test_each_mixed_class_and_its_collections_weigh_the_same_over_the_draws() -> None:
    targets, sources = labelled([(0, 0)] * 2 + [(1, 0)] * 8 + [(1, 1)] * 2 + [(2, 1)] * 3 + [(2, 2)] * 1)
    draws = np.where(sources == 2, 3.0, 1.0)  # the one image of viral/c drawn three times an epoch
    weights = source_cell_weights(targets, sources, 3, 3, draws)
    counts = torch.tensor([[2.0, 0, 0], [8, 2, 0], [0, 3, 3]])
    totals = weights * counts
    assert torch.equal(weights[0], torch.zeros(3))
    assert torch.allclose(totals[1:], torch.tensor([[4.0, 4, 0], [0, 4, 4]]))  # 16 weighted draws, 4 per cell


def test_source_loss_ignores_images_of_single_source_classes() -> None:
    torch.manual_seed(0)
    # Training split: covid from collection 0 only; other from collections 0 and 1 (3 and 1 images).
    targets, sources = labelled([(0, 0)] * 5 + [(1, 0)] * 3 + [(1, 1)])
    loss = ConditionalSourceLoss(source_cell_weights(targets, sources, 2, 3))  # collection 2 holds nothing
    source_logits = torch.randn(5, 2, 3, requires_grad=True)
    y, s = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 0, 1, 0, 1])
    value = loss(source_logits, y, s)
    value.backward()
    # By hand: the other images (1, 2, 4) only, their class's logits over the collections holding other (0, 1),
    # weighted 4/(2*3) for other/0 and 4/(2*1) for other/1.
    w = torch.tensor([2 / 3, 2.0, 2.0])
    ce = F.cross_entropy(source_logits[[1, 2, 4], 1, :2], s[[1, 2, 4]], reduction="none")
    assert torch.isclose(value, (w * ce).sum() / w.sum())
    assert torch.equal(source_logits.grad[[0, 3]], torch.zeros(2, 2, 3))  # the covid images: nothing
    assert torch.equal(source_logits.grad[:, 0], torch.zeros(5, 3))  # covid's block: never trained
    assert torch.equal(source_logits.grad[:, :, 2], torch.zeros(5, 2))  # a collection without other: masked
    only_covid = loss(source_logits[[0, 3]], y[[0, 3]], s[[0, 3]])
    assert only_covid.item() == 0.0


def backbone_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None])


def test_source_loss_reaches_the_backbone_reversed() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=False).eval()  # eval: no dropout, fixed batch norm
    net = AdversarialClassifier(model, num_sources=2)
    x = torch.rand(4, 1, 32, 32)
    y, sources = torch.tensor([1, 1, 2, 2]), torch.tensor([0, 1, 0, 1])
    source_loss = ConditionalSourceLoss(torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    assert net(x)[1].shape == (4, 3, 2)

    source_loss(net(x)[1], y, sources).backward()
    reversed_backbone = backbone_grads(model)
    reversed_head = [p.grad.clone() for p in net.source_head.parameters()]
    net.zero_grad(set_to_none=True)
    # The same loss without the reversal layer: the head's gradient is the same, the backbone's the opposite.
    source_loss(net.source_head(model.features(x)).view(4, 3, 2), y, sources).backward()
    plain_backbone = backbone_grads(model)
    assert plain_backbone.abs().max() > 0
    assert torch.allclose(reversed_backbone, -plain_backbone, atol=1e-7)
    for reversed_grad, param in zip(reversed_head, net.source_head.parameters()):
        assert torch.allclose(reversed_grad, param.grad)


def test_loss_adds_the_weighted_source_loss() -> None:
    torch.manual_seed(0)
    logits, source_logits = torch.randn(4, 3), torch.randn(4, 3, 2)
    y, s = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 0])
    ce = nn.CrossEntropyLoss()
    source_loss = ConditionalSourceLoss(torch.ones(3, 2))
    total = AdversarialLoss(ce, source_loss, weight=0.25)((logits, source_logits), (y, s))
    assert torch.isclose(total, ce(logits, y) + 0.25 * source_loss(source_logits, y, s))
    assert torch.isclose(source_loss(source_logits, y, s), ce(source_logits[torch.arange(4), y], s))


@pytest.fixture(scope="module")
def two_collections(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 images per class of the Radiography DB (covid, normal, viral) and 8 normal + 8 viral children of Kermany's
    test split (not pictures of the DB's): on covid,other, the binary task the adversary is for, covid comes from
    the DB alone and other from both collections."""
    from subsets import link_subset

    root = tmp_path_factory.mktemp("two")
    radiography = link_subset(shared_data / "COVID-19_Radiography_Dataset", root / "COVID-19_Radiography_Dataset", 8)
    kermany = root / "chest_xray"
    for folder, pattern in (("NORMAL", "*.jpg"), ("PNEUMONIA", "*_virus_*.jpg")):
        link_subset(shared_data / "chest_xray" / "test", kermany / "test", 8, f"{folder}/{pattern}")
    return [radiography, kermany]


def run_args(collections: list[Path], out: Path) -> list[str]:
    return ["train", *[a for path in collections for a in ("--data", str(path))], "--classes", "covid,other",
            "--img-size", "64", "--epochs", str(EPOCHS), "--batch-size", "8", "--patience", "99", "--out", str(out), "--quiet",
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
    assert "--balance class_source" in log and "other/kermany:" in log and "draws per epoch" in log
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
    assert len(rows) == 1 and rows[0]["label"] in BINARY


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

    # Radiography DB COVID only (covid) and Kermany normals only (other): each class comes from one collection.
    covid = link_subset(shared_data / "COVID-19_Radiography_Dataset", tmp_path / "COVID-19_Radiography_Dataset", 12, "COVID/images/*.jpg")
    kermany = link_subset(shared_data / "chest_xray" / "test", tmp_path / "chest_xray" / "test", 12, "NORMAL/*.jpg").parent
    code = main(["train", "--data", str(covid), "--data", str(kermany), "--classes", "covid,other", "--img-size", "64",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", "--adversary", "source"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--adversary source needs a class drawn from 2 or more" in err
    assert "found none (covid: radiography_db; other: kermany)" in err
    assert "Traceback" not in err
