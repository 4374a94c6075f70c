"""Each bundled model carries its drift reference, and storing it (scripts/bundle_reference.py) left its weights
byte-equal: the digests below are those of the state dicts before the reference was added."""

from __future__ import annotations

import hashlib

import pytest
import torch

from cxrscreen.metrics.reference import OutputReference
from cxrscreen.models.bundled import bundled_model
from cxrscreen.models.checkpoint import read_checkpoint

WEIGHTS_BEFORE_REFERENCE = {
    "default": "f9fbdc2e7a671618a089b51fdbe1f0da24b4e56e0fa7d80f4bb6a8382653c417",
    "adult-binary": "e5cb3bd8bf4aea4a9ef8b20d7406c00d9700d6c81f99dc2ab69602c259355c66",
}


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].contiguous()
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(WEIGHTS_BEFORE_REFERENCE))
def test_bundled_model_has_its_reference_and_unchanged_weights(name):
    payload = read_checkpoint(bundled_model(name).path)
    assert state_dict_digest(payload["state_dict"]) == WEIGHTS_BEFORE_REFERENCE[name]
    meta = payload["meta"]
    reference = OutputReference.from_dict(meta["reference"])
    validation = meta["train_summary"]["images_per_split"]["val"]
    assert reference.images == sum(validation.values())  # its own validation split, every image
    assert reference.classes == meta["classes"] and reference.has_guard
    assert sum(reference.label_counts.values()) == reference.images
    assert 0 < reference.flag_rate < 0.05  # out-of-fold scores: about the guard's 1% on images it never saw
