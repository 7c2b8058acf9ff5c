"""Mount settings from the config file, `RAYFS_*` environment variables and flags.

Later sources win: `~/.config/rayfs/config.toml` (or `RAYFS_CONFIG`), then the
environment, then the command line. Every setting has the same name in all
three: `api_url` is `--api-url`, `RAYFS_API_URL` and `api_url = "..."`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import urllib.parse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from rayfs.api.client import base_url_for_region
from rayfs.errors import ConfigError

logger = logging.getLogger(__name__)

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "rayfs"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rayfs"


def default_config_file() -> Path:
    return Path(os.environ.get("RAYFS_CONFIG") or config_home() / "config.toml")


@dataclass
class Settings:
    """Everything a mount needs; field names are the config keys."""

    api_url: str = ""
    region: str = ""
    client_id: str = ""
    token: str = field(default="", repr=False)
    token_file: str = ""
    auth_scheme: str = "Bearer"
    metadata_ttl: float = 60.0
    cache_dir: str = ""
    cache_max_size: str = "10G"
    log_file: str = ""
    log_level: str = "INFO"
    spool_dir: str = ""
    write_back: float = 2.0

    def resolved_api_url(self) -> str:
        """Return the API base URL: `api_url` when set, else the one built from `region`."""
        if self.api_url:
            if not self.api_url.startswith(("http://", "https://")):
                raise ConfigError(f"invalid API URL {self.api_url!r}: it must start with http:// or https://")
            try:
                parsed = urllib.parse.urlsplit(self.api_url)
                parsed.port
            except ValueError as exc:
                raise ConfigError(f"invalid API URL {self.api_url!r}: {exc}") from exc
            if not parsed.hostname:
                raise ConfigError(f"invalid API URL {self.api_url!r}: it names no host")
            return self.api_url.rstrip("/")
        if self.region:
            return base_url_for_region(self.region)
        raise ConfigError("no API given: pass --api-url URL or --region REGION (or try `rayfs demo`)")

    def resolved_token(self) -> str:
        """Return the access token from `token` or the first line of `token_file`."""
        if self.token:
            return self.token.strip()
        if self.token_file:
            path = Path(self.token_file).expanduser()
            try:
                token = path.read_text(encoding="utf-8").strip().splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
            if not token or not token[0].strip():
                raise ConfigError(f"token file {path} is empty: put the access token on its first line")
            return token[0].strip()
        raise ConfigError("no access token given: pass --token TOKEN or --token-file FILE")

    def account_key(self) -> str:
        """Return a short name of the account for cache folders (no secret in it)."""
        identity = f"{self.resolved_api_url()}\0{self.client_id}"
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return cache_home() / self.account_key()

    def resolved_spool_dir(self) -> Path:
        if self.spool_dir:
            return Path(self.spool_dir).expanduser()
        return self.resolved_cache_dir() / "spool"

    def cache_max_bytes(self) -> int:
        return parse_size(self.cache_max_size, "cache_max_size")


def parse_size(text: str, name: str) -> int:
    """Parse sizes like `512M`, `10G` or `1048576` (bytes)."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in SIZE_UNITS and not value[-1:].isdigit() else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except ValueError as exc:
        raise ConfigError(f"invalid {name} {text!r}: use a number of bytes or a size like 512M or 10G") from exc
    if size < 0:
        raise ConfigError(f"invalid {name} {text!r}: it must not be negative")
    return size


def load_settings(flags: dict[str, Any], *, config_file: Path | None = None) -> Settings:
    """Merge the config file, the environment and `flags` (None values are unset flags)."""
    settings = Settings()
    names = {item.name: item for item in fields(Settings)}

    path = config_file or default_config_file()
    for key, value in read_config_file(path).items():
        if key not in names:
            raise ConfigError(f"unknown key {key!r} in {path}; valid keys: {', '.join(sorted(names))}")
        _set(settings, key, value, source=str(path))

    for key in names:
        value = os.environ.get("RAYFS_" + key.upper())
        if value is not None and value != "":
            _set(settings, key, value, source="RAYFS_" + key.upper())

    for key, value in flags.items():
        if key in names and value is not None:
            _set(settings, key, value, source="--" + key.replace("_", "-"))

    return settings


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"invalid config file {path}: {exc}") from exc

    if "token" in data and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("config file %s contains a token but others can read it: run chmod 600 %s", path, path)
    return data


def _set(settings: Settings, key: str, value: Any, *, source: str) -> None:
    current = getattr(settings, key)
    if isinstance(current, float):
        try:
            value = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {key} {value!r} from {source}: expected a number of seconds") from exc
        if value < 0:
            raise ConfigError(f"invalid {key} {value!r} from {source}: it must not be negative")
    else:
        value = str(value)
    setattr(settings, key, value)
