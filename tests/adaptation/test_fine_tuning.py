"""The tail on stored frozen outputs is the whole network; fine-tuning changes only the tail and never pulls
images towards a class the site has no image of."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cxrscreen.adaptation.fine_tuning import TuneSettings, cut_index, fine_tune, frozen_features, predict_features
from cxrscreen.models.factory import create_model
from cxrscreen.training.steps import predict_logits

SETTINGS = TuneSettings(epochs=3, patience=2, batch_size=16, lr=1e-3, weight_decay=1e-4, label_smoothing=0.05)


def images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 64, 64)) * 255).astype(np.uint8)


def test_frozen_part_then_tail_equals_the_whole_network():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 3, pretrained=True).eval()
    x = images(6)
    cut = cut_index(model, 3)
    tail = predict_features(model, frozen_features(model, x, cut, 1, "none", 0)[0], cut)
    np.testing.assert_allclose(tail, predict_logits(model, x, torch.device("cpu")), atol=2e-3)


def test_a_class_without_site_images_is_not_made_more_likely():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    parent = create_model("efficientnet_lite0", 3, pretrained=True).eval()
    with torch.no_grad():
        parent.head.bias[2] -= 5.0  # the parent already finds class 2 unlikely on these images
    x = images(32, seed=1)
    targets = np.array([0, 1] * 16)  # class 2 absent, as COVID at a children's hospital
    cut = cut_index(parent, 1)
    features = frozen_features(parent, x, cut, 2, "default", 0)
    before = torch.softmax(torch.from_numpy(predict_features(parent, features[0], cut)), 1)[:, 2].mean()
    tuned = fine_tune(parent, features, targets, np.arange(32), None, cut, SETTINGS, seed=0, epochs=3)
    after = torch.softmax(torch.from_numpy(predict_features(tuned.model, features[0], cut)), 1)[:, 2].mean()
    assert after < before
    stem = "backbone.net._conv_stem.weight"
    torch.testing.assert_close(tuned.model.state_dict()[stem], parent.state_dict()[stem])


def test_backbone_layers_learn_at_the_lower_rate():
    """The head learns at lr, the fine-tuned backbone layers at lr * backbone_lr_factor (AdamW: steps scale with it)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    parent = create_model("efficientnet_lite0", 3, pretrained=True).eval()
    x, targets = images(32, seed=2), np.array([0, 1] * 16)
    cut = cut_index(parent, 1)
    features = frozen_features(parent, x, cut, 1, "none", 0)
    moved = {}
    for factor in (1.0, 0.01):
        settings = dataclasses.replace(SETTINGS, backbone_lr_factor=factor, label_smoothing=0.0)
        tuned = fine_tune(parent, features, targets, np.arange(32), None, cut, settings, seed=0, epochs=2).model
        moved[factor] = {name: (tuned.state_dict()[name] - parent.state_dict()[name]).abs().mean().item()
                         for name in ("backbone.net._conv_head.weight", "head.weight")}
    assert moved[0.01]["backbone.net._conv_head.weight"] < 0.05 * moved[1.0]["backbone.net._conv_head.weight"]
    assert moved[0.01]["head.weight"] > 0.3 * moved[1.0]["head.weight"]
