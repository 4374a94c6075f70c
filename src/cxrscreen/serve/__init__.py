"""Serving: the REST API and the static web page."""
