"""Serving: the REST API and the static web page (``cxrscreen serve``).

``create_app`` and ``serve`` load FastAPI and uvicorn on first use, so the command line (``cxrscreen train``
on a training machine without the web stack, say) does not import them.
"""

from __future__ import annotations

from typing import Any

from cxrscreen.serve.settings import ServeSettings

__all__ = ["create_app", "serve", "ServeSettings"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from cxrscreen.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'cxrscreen.serve' has no attribute {name!r}")
