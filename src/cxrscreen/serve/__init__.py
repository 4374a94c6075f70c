"""Serving: the REST API and the static web page (``cxrscreen serve``)."""

from cxrscreen.serve.app import create_app, serve
from cxrscreen.serve.settings import ServeSettings

__all__ = ["create_app", "serve", "ServeSettings"]
