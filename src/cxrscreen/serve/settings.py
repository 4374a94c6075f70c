"""Settings of the REST service, as one dataclass the CLI maps its flags onto."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cxrscreen.errors import ConfigError

API_KEY_ENV = "CXRSCREEN_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """How the service listens and what it accepts.

    - ``workers``: how many predictions run at once, each on its own thread off the event loop (two by default, so
      one slow image does not hold up the next request; more cost memory and CPU threads).
    - ``max_upload_mb``: largest accepted X-ray file (MiB); bigger uploads are answered 413 without being read whole.
    - ``api_key``: when set, every ``/v1/`` request needs it (``X-API-Key`` or ``Authorization: Bearer``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    max_upload_mb: float = 20.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers must be between 1 and 64, got {self.workers}")
        if not 0 < self.max_upload_mb <= 1024:
            raise ConfigError(f"--max-upload-mb must be above 0 and at most 1024, got {self.max_upload_mb}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key must not be empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def resolve_api_key(explicit: str | None) -> str | None:
    """The key given on the command line, else ``$CXRSCREEN_API_KEY``, else None (no key needed)."""
    return explicit if explicit is not None else (os.environ.get(API_KEY_ENV) or None)
