"""``cxrscreen models``: the models that ship with cxrscreen (what each is for and how it did outside its training
collections) and the architectures ``cxrscreen train --model`` can build."""

from __future__ import annotations

import argparse
import json

from cxrscreen.models.bundled import bundled_models


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the bundled models (give a name to --model) and the architectures train can build",
        description="The bundled models: name (give it to --model or load_model), classes, input size, file size, "
        "what each is for, and the figures measured on collections it was not trained on (see MODEL_CARD.md); "
        "then the registered architectures (cxrscreen train --model ARCH).",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run_models)


def describe_bundled() -> list[dict]:
    """One dict per bundled model: the manifest's entry plus what its checkpoint says (classes, input, name)."""
    from cxrscreen.models.checkpoint import ModelMeta, read_checkpoint

    rows = []
    for model in bundled_models().values():
        meta = ModelMeta.from_dict(read_checkpoint(model.path)["meta"])
        rows.append({"name": model.name, "classes": list(meta.classes), "img_size": meta.preprocessing.img_size,
                     "checkpoint": meta.name, "file": str(model.path),
                     "megabytes": round(model.path.stat().st_size / 1e6, 1), "use": model.use,
                     "external": model.external})
    return rows


def describe_architectures() -> list[dict]:
    from cxrscreen.models.factory import list_models

    return [{"name": spec.name, "img_size": spec.default_img_size, "pretrained": spec.has_pretrained,
             "description": spec.description} for spec in list_models()]


def run_models(args: argparse.Namespace) -> int:
    rows, architectures = describe_bundled(), describe_architectures()
    if args.json:
        print(json.dumps({"bundled": rows, "architectures": architectures}, indent=2))
        return 0
    print("Bundled models (--model NAME):")
    for row in rows:
        print(f"{row['name']}: {','.join(row['classes'])}, {row['img_size']} px, {row['megabytes']} MB "
              f"({row['checkpoint']})")
        print(f"  {row['use']}")
        for measure, figure in row["external"].items():
            print(f"  {measure}: {figure}")
    print("\nArchitectures (cxrscreen train --model ARCH):")
    for spec in architectures:
        print(f"{spec['name']:22s} {spec['img_size']:4d}px  pretrained={'yes' if spec['pretrained'] else 'no '}  "
              f"{spec['description']}")
    return 0
