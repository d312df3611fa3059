"""TOML config -> validated settings. Secret references are resolved here, once, at start-up.

Every problem is reported as one line naming the file and the key path
(`config/etl.toml: sources[1].api_secret: environment variable X is not set`).
Secrets are `Secret` objects: their repr, str and any error never show the value.
Only the commands that talk to venues resolve them (`load_settings(secrets=True)`);
the others check the references' form and never read the environment or the files,
so reading the store needs no trading key.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from etl.errors import ConfigError
from etl.venues import VENUES

DEFAULT_CONFIG = Path("config/etl.toml")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
# Bounds, named here once. Any duration: ten years at most (a retention horizon, an age
# in `--since`); past that it is a typo, and timedelta overflows soon after. A slot
# interval: a day at most, since slots are aligned to it from 1970-01-01 UTC (a
# 100-year interval would label today's poll 1970-01-01 and the next prune drop it),
# and 2 s at least, the daemon's scheduling grace (1 s) staying under the interval.
MAX_DURATION = timedelta(days=3650)
MAX_INTERVAL = timedelta(days=1)
MIN_INTERVAL = timedelta(seconds=2)
MAX_TIMEOUT = timedelta(minutes=10)


def parse_duration(text: Any) -> timedelta:
    """'60s', '5m', '1h', '90d', '500ms' -> timedelta; anything else is a ValueError."""
    if isinstance(text, timedelta):
        return text
    match = _DURATION.match(str(text)) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a duration like '60s', '5m', '1h' or '90d', got {text!r}")
    try:
        seconds = Decimal(match.group(1)) * Decimal(str(_UNITS[match.group(2)]))
    except InvalidOperation:
        raise ValueError(f"bad duration {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    if seconds > Decimal(MAX_DURATION.total_seconds()):
        raise ValueError(f"a duration must be at most {MAX_DURATION.days}d, got {text!r}")
    return timedelta(seconds=float(seconds))


def _at_most(limit: timedelta, what: str) -> Any:
    def check(value: timedelta | None) -> timedelta | None:
        if value is not None and value > limit:
            raise ValueError(f"{what} must be at most {_short(limit)}, got {_short(value)}")
        return value

    return check


def _short(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
# slots are aligned to the interval from the epoch: see MAX_INTERVAL
Interval = Annotated[Duration, AfterValidator(_at_most(MAX_INTERVAL, "an interval"))]
Timeout = Annotated[Duration, AfterValidator(_at_most(MAX_TIMEOUT, "a timeout"))]


class Secret:
    """A credential. Only `reveal()` gives the value; nothing else prints it."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str | None, origin: str):
        self._value = value  # None: a reference checked but not resolved (load_settings(secrets=False))
        self.origin = origin  # "env:NAME" or "file:PATH": safe to show

    @property
    def resolved(self) -> bool:
        return self._value is not None

    def reveal(self) -> str:
        if self._value is None:
            raise ConfigError(f"secret {self.origin} was not resolved: this command does not talk to venues")
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.origin})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (other._value, other.origin) == (self._value, self.origin)

    def __hash__(self) -> int:
        return hash(self.origin)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not to be pickled")


def resolve_secret(reference: Any, base_dir: Path, *, resolve: bool = True) -> Secret:
    """`env:NAME` or `file:PATH` -> Secret. Surrounding whitespace is not part of a secret:
    a mounted secret or an env file often ends in a newline, which would otherwise go
    into a header (and from there into an httpx error, a log line, the database).
    With resolve=False only the reference's form is checked."""
    if isinstance(reference, Secret):
        return reference
    if not isinstance(reference, str):
        raise ValueError("expected a reference 'env:NAME' or 'file:PATH'")
    kind, _, target = reference.partition(":")
    if kind in ("env", "file") and target and not resolve:
        return Secret(None, reference)
    if kind == "env" and target:
        value = os.environ.get(target, "").strip()
        if not value:
            raise ValueError(f"environment variable {target} is not set")
        return Secret(value, reference)
    if kind == "file" and target:
        path = Path(target).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise ValueError(f"cannot read secret file {path}: {err.strerror}") from None
        if not value:
            raise ValueError(f"secret file {path} is empty")
        return Secret(value, reference)
    # Deliberately no echo of the value: it may be a pasted literal key.
    raise ValueError("secrets must be references 'env:NAME' or 'file:PATH', not literal values")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class DatabaseConfig(_Model):
    url: str | None = None

    def __repr_args__(self) -> Any:
        # repr(Settings) ends up in logs and tracebacks: never with the password
        yield "url", redact_url(self.url) if self.url else self.url


def redact_url(url: str) -> str:
    """A database URL with its password (userinfo or `password=` parameter) replaced by ***."""
    url = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


_SIZE_UNITS = {"B": 1, "kB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}
_SIZE = re.compile(r"^\s*(\d{1,10})\s*(B|kB|KiB|MB|MiB|GB|GiB)\s*$")
MAX_BODY_LIMIT = 2**30  # a larger cap is no cap: parsing that much costs gigabytes


def parse_size(text: Any) -> int:
    """'32MiB', '500kB', '1GiB' -> bytes, from 1 KiB to 1 GiB; anything else is a ValueError."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a size like '32MiB', '500kB' or '1GiB', got {text!r}")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not 2**10 <= size <= MAX_BODY_LIMIT:
        raise ValueError(f"a size must be from 1KiB to 1GiB, got {text!r}")
    return size


class ScheduleConfig(_Model):
    interval: Interval = timedelta(seconds=60)
    timeout: Timeout = timedelta(seconds=10)  # per HTTP request, the whole exchange
    # `etl run --once` and `etl check` end by then; None: three quarters of the shortest
    # interval polled, so a cron job every interval never overlaps itself.
    deadline: Duration | None = None
    max_body: Annotated[int, BeforeValidator(parse_size)] = 16 * 2**20  # bytes per response


class RetentionConfig(_Model):
    """`[retention]`: the daemon drops fine-grained months older than this, daily (`etl prune`)."""

    older_than: Duration = timedelta(days=90)


class SourceConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    venue: str
    api_key: Secret
    api_secret: Secret | None = None
    base_url: str | None = None
    interval: Interval | None = None
    params: dict[str, str] = Field(default_factory=dict)

    @field_validator("venue")
    @classmethod
    def _known_venue(cls, venue: str) -> str:
        if venue not in VENUES:
            raise ValueError(f"unknown venue {venue!r} (expected one of {', '.join(VENUES)})")
        return venue

    @field_validator("api_key", "api_secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Secret | None:
        if value is None:
            return None
        context = info.context or {}
        return resolve_secret(value, context.get("base_dir", Path.cwd()), resolve=context.get("secrets", True))

    @field_validator("params", mode="before")
    @classmethod
    def _params_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _secret_if_signed(self) -> SourceConfig:
        if VENUES[self.venue].signed and self.api_secret is None:
            raise ValueError(f"api_secret: required for venue {self.venue}")
        return self


class Settings(_Model):
    database: DatabaseConfig = DatabaseConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    sources: list[SourceConfig] = Field(default_factory=list)
    retention: RetentionConfig | None = None  # absent: nothing is pruned unless asked
    path: Path | None = None

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} appears twice")
            seen.add(source.name)
        return sources

    def interval_of(self, source: SourceConfig) -> timedelta:
        return source.interval or self.schedule.interval

    def select(self, names: list[str] | None) -> list[SourceConfig]:
        if not names:
            return list(self.sources)
        known = {s.name: s for s in self.sources}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                f"unknown source {', '.join(missing)} (configured: {', '.join(known) or 'none'})"
            )
        return [known[n] for n in names]


def check_for_daemon(settings: Settings) -> None:
    """What the daemon requires beyond a valid config; `etl check` asks exactly this too,
    so it never says ok to a config the daemon then refuses."""
    for i, source in enumerate(settings.sources):
        if settings.interval_of(source) < MIN_INTERVAL:
            raise ConfigError(
                f"{settings.path or 'config'}: sources[{i}] ({source.name}): the daemon needs an "
                f"interval of at least {MIN_INTERVAL.total_seconds():g}s"
            )


def _path_of(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(err: ValidationError, where: str) -> str:
    problems = []
    for item in err.errors():
        loc = tuple(p for p in item["loc"] if p not in ("function-after[_secret_if_signed()]",))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{_path_of(loc)}: {message}" if loc else message)
    return f"{where}: " + "; ".join(problems)


def parse_settings(data: dict[str, Any], *, path: Path | None = None, secrets: bool = True) -> Settings:
    where = str(path) if path else "config"
    base_dir = path.parent if path else Path.cwd()
    try:
        return Settings.model_validate(
            {**data, "path": path}, context={"base_dir": base_dir, "secrets": secrets}
        )
    except ValidationError as err:
        raise ConfigError(_one_line(err, where)) from None


def config_path(explicit: Path | None) -> Path | None:
    """--config, else ETL_CONFIG, else config/etl.toml if it exists, else None."""
    if explicit is not None:
        return explicit
    env = os.environ.get("ETL_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_settings(explicit: Path | None = None, *, secrets: bool = True) -> Settings:
    """The settings; secrets=False for commands that only read the store (see the module doc)."""
    path = config_path(explicit)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    return parse_settings(data, path=path, secrets=secrets)


def data_dir() -> Path:
    """ETL_DATA_DIR, else ~/.local/share/etl; as root /var/lib/etl.

    As root, pgserver makes every parent of its data dir traversable (it runs the
    server as a separate user); under /root that would silently open the home folder.
    """
    env = os.environ.get("ETL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/etl")
    return Path.home() / ".local" / "share" / "etl"
