"""Adapting a model to a site: validate it on the site's labelled images, fine-tune it there by cross-validation,
and keep the adapted model with its lineage (``cxrscreen adapt``)."""

from cxrscreen.adaptation.adapt import AdaptResult, adapt
from cxrscreen.adaptation.config import AdaptConfig

__all__ = ["AdaptConfig", "AdaptResult", "adapt"]
