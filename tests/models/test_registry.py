"""The model registry and the pretrained backbone (verified against the reference package, not assumed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cxrscreen.errors import ConfigError
from cxrscreen.hashing import file_sha256
from cxrscreen.models.efficientnet_lite import WEIGHT_SHA256, load_reference, weights_file
from cxrscreen.models.factory import create_model, list_models


def test_registry_lists_pretrained_and_monai_architectures() -> None:
    specs = {spec.name: spec for spec in list_models()}
    assert specs["efficientnet_lite0"].has_pretrained
    assert "monai_densenet121" in specs and not specs["monai_densenet121"].has_pretrained


def test_the_registry_imports_no_model() -> None:
    """As timm's: the model modules register themselves and the factory imports them; no circle (issue 26)."""
    script = "import sys, cxrscreen.models.registry; print(sorted(m for m in sys.modules if m.startswith('cxrscreen.models.')))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['cxrscreen.models.registry']"


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet9000"):
        create_model("resnet9000", 3)


def test_shipped_weight_file_matches_its_checksum() -> None:
    assert file_sha256(weights_file("lite0")) == WEIGHT_SHA256["efficientnet-lite0"]


def test_gray_backbone_equals_reference_on_repeated_channels() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 96, 96)
    model = create_model("efficientnet_lite0", 3, pretrained=True).eval()
    reference = load_reference("lite0")
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = reference.extract_features(x.repeat(1, 3, 1, 1))
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_pretrained_weights_differ_from_random_init() -> None:
    pretrained = create_model("efficientnet_lite0", 2, pretrained=True).backbone.net._conv_head.weight
    random = create_model("efficientnet_lite0", 2, pretrained=False).backbone.net._conv_head.weight
    assert not torch.allclose(pretrained, random)


# The activation each backbone applies after its Grad-CAM layer, before the head's average pooling.
LAST_ACTIVATION = {"efficientnet_lite0": torch.nn.functional.relu6, "monai_densenet121": torch.relu}


@pytest.mark.parametrize("name", sorted(LAST_ACTIVATION))
def test_every_model_takes_the_image_convention(name: str) -> None:
    # Pretrained where there are weights: a freshly initialised batch norm is the identity, hiding a layer off by one.
    pretrained = {spec.name: spec.has_pretrained for spec in list_models()}[name]
    model = create_model(name, 3, pretrained=pretrained).eval()
    captured: list[torch.Tensor] = []
    model.get_submodule(model.target_layer).register_forward_hook(lambda _m, _i, output: captured.append(output))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (2, 3)
    assert feats.shape == (2, model.head.in_features)
    # Grad-CAM's layer is the last feature map, 1/32 of the input side, that the head pools (after one activation).
    activations = captured[-1]
    assert activations.shape == (2, model.head.in_features, 2, 2)
    torch.testing.assert_close(LAST_ACTIVATION[name](activations).mean(dim=(2, 3)), feats)
    torch.testing.assert_close(model.head(feats), logits)
