"""Archive credentials from the environment or a file, never from the command line.

Environment: ``CLINSEG_PACS_USER`` + ``CLINSEG_PACS_PASSWORD`` (HTTP basic) or ``CLINSEG_PACS_TOKEN`` (bearer).
File (``--credentials FILE``): JSON ``{"username": ..., "password": ...}`` or ``{"token": ...}``.
The values are never logged nor written anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Credentials", "load_credentials"]

ENV_USER, ENV_PASSWORD, ENV_TOKEN = "CLINSEG_PACS_USER", "CLINSEG_PACS_PASSWORD", "CLINSEG_PACS_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """HTTP basic or bearer credentials; ``repr`` hides the secrets. ``source`` names where they came from (an
    environment variable or the file), for messages: never the values."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "none"

    def __bool__(self) -> bool:
        return bool(self.token or self.username)


def load_credentials(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Credentials:
    """Credentials from ``path`` when given, else from the environment (empty when neither holds any).

    Raises:
        ValueError: the file is not a JSON object with ``username`` and ``password`` or ``token``, or the
            environment holds a user without a password.
    """
    if path is not None:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"credentials file {path}: cannot read it as JSON ({type(e).__name__})"
            ) from None
        if not isinstance(data, dict) or not (
            data.get("token") or (data.get("username") and "password" in data)
        ):
            raise ValueError(
                f'credentials file {path}: expected {{"username": ..., "password": ...}} or {{"token": ...}}'
            )
        return Credentials(
            data.get("username"), data.get("password"), data.get("token"), source=f"--credentials file {path}"
        )
    env = os.environ if environ is None else environ
    if env.get(ENV_TOKEN):
        return Credentials(token=env[ENV_TOKEN], source=ENV_TOKEN)
    if env.get(ENV_USER):
        if ENV_PASSWORD not in env:
            raise ValueError(f"{ENV_USER} is set but {ENV_PASSWORD} is not")
        return Credentials(env[ENV_USER], env[ENV_PASSWORD], source=f"{ENV_USER}/{ENV_PASSWORD}")
    return Credentials()
