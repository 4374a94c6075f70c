"""The models that ship inside the package, by name.

``weights/bundled.json`` is their one owner: for each name, the checkpoint file beside it, what the model is for,
and the figures measured on collections it never saw (the benchmark that measured them is in MODEL_CARD.md). A
name goes wherever a model path goes (``--model adult-binary``, ``load_model("adult-binary")``); ``cxrscreen
models`` lists them. Torch-free: listing names and resolving them loads no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxrscreen.errors import ModelError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "bundled.json"
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class BundledModel:
    """One shipped checkpoint: ``external`` maps a measure on an unseen collection to its figure (as text, CI included)."""

    name: str
    file: str
    use: str
    external: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def bundled_models(manifest: Path = MANIFEST) -> dict[str, BundledModel]:
    """Every bundled model by name, in the manifest's order (the default first)."""
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{manifest}: cannot read the list of bundled models ({exc})") from None
    return {name: BundledModel(name=name, file=entry["file"], use=entry.get("use", ""),
                               external=dict(entry.get("external", {})))
            for name, entry in entries.items()}


def bundled_model(name: str = DEFAULT_NAME) -> BundledModel:
    """The bundled model called ``name``; :class:`ModelError` listing the names when there is none."""
    models = bundled_models()
    if name not in models:
        raise ModelError(f"no bundled model named {name!r} (bundled: {', '.join(models)})")
    model = models[name]
    if not model.path.is_file():
        raise ModelError(f"bundled model {name!r} is missing its file {model.path}; reinstall cxrscreen or pass a "
                         "model file with --model (a checkpoint .pt, a run directory or an exported .onnx)")
    return model


def is_bundled_name(text: str) -> bool:
    """True when ``text`` names a bundled model (and is not also a file or folder: a path always wins)."""
    return not Path(text).exists() and text in bundled_models()
