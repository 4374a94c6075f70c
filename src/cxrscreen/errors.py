"""One exception hierarchy; the CLI and the API turn these into one-line messages."""

from __future__ import annotations


class CxrError(Exception):
    """Base class of every error cxrscreen raises for a user-facing problem."""

    exit_code = 2


class ImageDecodeError(CxrError):
    """A file is not an image cxrscreen can read (missing, empty, truncated, unsupported, too large)."""

    exit_code = 1


class DatasetLayoutError(CxrError):
    """A data path does not hold a layout cxrscreen recognises, or a class/label cannot be used."""


class ConfigError(CxrError):
    """An option or argument is invalid."""


class ModelError(CxrError):
    """A checkpoint is missing, corrupt or incompatible."""


class RunDirError(CxrError):
    """A run directory cannot be used (already finished, missing, incompatible resume)."""


class OutputError(CxrError):
    """An output path cannot be written (a file where a folder should be, no permission, a read-only disk)."""


class AuditLogError(CxrError):
    """An audit log cannot be read, holds no screened image, or was written by another model."""
