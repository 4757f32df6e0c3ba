"""Settings: one object built at start-up and passed into constructors.

Sources, highest priority first: constructor arguments, `MODERATOR_*` environment variables
(nested with `__`, e.g. `MODERATOR_KAFKA__BOOTSTRAP_SERVERS`), a YAML file named by
`MODERATOR_CONFIG` (or `--config`), then the defaults below. The README's settings table is
generated from these models (`moderator settings --markdown`), so descriptions here are user docs.

Errors never show a secret (`moderator.settings_errors` says how): a bad
`MODERATOR_REDIS__URL` or SASL password is reported by name, never by value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from types import UnionType
from typing import Any, Final, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from moderator.errors import ConfigError
from moderator.settings_errors import (
    describe,
    env_secrets,
    mask,
    secret_paths,
    secrets_in,
    yaml_problem,
)
from moderator.types import DEFAULT_ATTENTION, AttentionKernel

ENV_PREFIX = "MODERATOR_"
NESTED_DELIMITER = "__"
CONFIG_FILE_VAR = "MODERATOR_CONFIG"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    group_id: str = Field("moderator", description="Consumer group shared by all replicas.")
    input_topic: str = Field("moderation.images", description="Topic the image events arrive on.")
    verdict_topic: str = Field(
        "moderation.verdicts", description="Topic verdicts are published to."
    )
    dlq_topic: str = Field("moderation.dlq", description="Dead-letter topic for unusable events.")
    embeddings_topic: str | None = Field(
        None, description="When set, image embeddings are published here too (off by default)."
    )
    create_topics: bool = Field(True, description="Create missing topics at start.")
    topic_partitions: int = Field(6, ge=1, description="Partitions for topics created at start.")
    topic_replication: int = Field(1, ge=1, description="Replication factor for created topics.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for TLS to the brokers.")
    max_poll_records: int = Field(500, ge=1, description="Records fetched per poll at most.")
    max_partition_fetch_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Bytes one fetch returns per partition at most (Kafka's default, 1 MiB, "
        "is two or three inline photos).",
    )
    fetch_max_wait_ms: int = Field(
        500, ge=0, description="Longest the broker holds a fetch while it has too few bytes."
    )
    check_crcs: bool = Field(
        True,
        description="Verify each fetched batch's CRC32C. It catches corruption at rest on the "
        "broker; turning it off saves about 0.2 ms of event-loop CPU per 400 KB record.",
    )
    session_timeout_ms: int = Field(45_000, ge=1000, description="Consumer session timeout.")
    idempotent_producer: bool = Field(
        True,
        description="Idempotent producer (acks=all either way). Off only for brokers without "
        "InitProducerId, e.g. Tansu: a retried send may then duplicate a verdict.",
    )


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisSettings(BaseModel):
    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL; may carry a password, so it is treated as a secret.",
    )
    enabled: bool = Field(True, description="Use Redis for the embedding caches.")
    image_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="TTL of cached image embeddings.")
    text_ttl_s: int = Field(30 * 24 * 3600, ge=1, description="TTL of cached text embeddings.")
    timeout_s: float = Field(0.5, gt=0, description="Per-command timeout; Redis is optional.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        # Checked here so a typo fails at start with a message naming the part that is wrong;
        # the messages name parts, never the URL, which may carry a password.
        problem = _redis_url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(f"not a usable Redis URL: {problem}")
        return value


def _redis_url_problem(url: str) -> str | None:
    """What redis-py's `from_url` would reject or misread in `url`, or None."""
    if not url.lower().startswith(_REDIS_SCHEMES):
        return "the scheme must be redis://, rediss:// or unix://"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "its host or port does not parse (the port must be a number in 1-65535)"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs a socket path"
    if port == 0:
        return "port 0 is not a server port"
    db = parts.path.strip("/")
    if db and not db.isdigit():  # redis-py would quietly use database 0
        return "the path must be a database number (/0, /1, ...)"
    return None


Provider = Literal["cuda", "tensorrt", "cpu"]


def _default_providers() -> list[Provider]:
    return ["cuda", "cpu"]


class ModelSettings(BaseModel):
    path: str = Field("demo", description="Exported model directory, or `demo`.")
    providers: list[Provider] = Field(
        default_factory=_default_providers,
        description="Execution providers in order of preference; unavailable ones are skipped.",
    )
    device_ids: list[int] = Field(
        default_factory=lambda: [0], description="GPU ids, one inference worker each."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime CPU threads (0 = auto).")
    attention_kernel: AttentionKernel = Field(
        DEFAULT_ATTENTION,
        description="CUDA fused attention kernel: efficient (CUTLASS), flash, cudnn, or auto "
        "(ONNX Runtime's choice, cuDNN on Hopper, which sets up each new batch size first).",
    )
    verify_hashes: bool = Field(True, description="Check every model file's sha256 at load.")
    cuda_graphs: bool = Field(
        True,
        description="Replay the image tower as a CUDA graph per batch bucket (CUDA provider; "
        "captured at load, falls back to plain runs if capture fails): on an H100 1.9-2.6x "
        "the images/s at batch 1, 1.2-1.5x at 32, the same at 256 (docs/performance.md).",
    )


class PolicySettings(BaseModel):
    path: Path = Field(Path("policies/demo.yaml"), description="Policy file or directory.")
    reload_interval_s: float = Field(2.0, gt=0, description="How often the path is checked.")
    top_k: int = Field(5, ge=0, description="Top scores reported in each verdict.")


# Widest network fetch_allow_networks accepts, by IP version (prefix length).
_MIN_EXEMPT_PREFIX: Final = {4: 8, 6: 16}


class PipelineSettings(BaseModel):
    max_batch: int = Field(64, ge=1, description="Images per inference batch at most.")
    max_wait_ms: float = Field(10.0, ge=0, description="Longest a partial batch waits.")
    max_in_flight: int = Field(1024, ge=1, description="Events in flight before partitions pause.")
    decode_workers: int = Field(0, ge=0, description="Decode processes (0 = CPU count).")
    gpu_decode: Literal["auto", "on", "off"] = Field(
        "off",
        description="Decode JPEGs on the GPU (nvImageCodec, the gpu extra) when the model runs "
        "on one: auto uses it when it can, on refuses to start without it. More verdicts/s "
        "when CPU decoding bounds, but a much longer latency tail (docs/performance.md).",
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted image.")
    memory_budget_bytes: int = Field(
        2 * 1024**3,
        ge=1024 * 1024,
        description="Image bytes held at once: consumed records until answered, and a "
        "max_image_bytes reservation per URL download. While it is spent the consumer pauses "
        "and downloads wait. Keep it well under the pod's memory limit: the model, ORT and "
        "each decode process need their own.",
    )
    max_image_pixels: int = Field(50_000_000, ge=1, description="Decompression-bomb guard.")
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"],
        description="Pillow formats accepted.",
    )
    fetch_timeout_s: float = Field(5.0, gt=0, description="Per-request timeout for image URLs.")
    fetch_retries: int = Field(2, ge=0, description="Retries of transient fetch failures.")
    fetch_allowed_hosts: list[str] = Field(
        default_factory=list, description="When non-empty, only these hosts may be fetched."
    )
    fetch_allow_private: bool = Field(
        False, description="Allow private/loopback addresses (local testing only)."
    )
    fetch_allow_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="CIDRs exempt from the private-address check (e.g. an internal image "
        "store), without opening every private address as fetch_allow_private does.",
    )
    drain_timeout_s: float = Field(20.0, gt=0, description="SIGTERM drain deadline.")

    @field_validator("fetch_allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        # One plain message per bad entry ("10.0.0.1/8 has host bits set") instead of the
        # union's two validator traces.
        if not isinstance(value, list):
            return value
        try:
            networks = [ip_network(v) if isinstance(v, str) else v for v in value]
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        for net in networks:
            # An exemption this wide switches the SSRF guard off (cloud metadata included);
            # fetch_allow_private says that openly, this setting should not do it by accident.
            if net.prefixlen < _MIN_EXEMPT_PREFIX[net.version]:
                raise ValueError(
                    f"{net} is too broad to exempt (at most /{_MIN_EXEMPT_PREFIX[net.version]} "
                    "wide); use fetch_allow_private for every private address"
                )
        return networks

    @model_validator(mode="after")
    def _budget_fits_downloads(self) -> PipelineSettings:
        # Below two images, downloads would take turns with the records waiting for them.
        if self.memory_budget_bytes < 2 * self.max_image_bytes:
            raise ValueError(
                f"memory_budget_bytes ({self.memory_budget_bytes}) must be at least twice "
                f"max_image_bytes ({self.max_image_bytes})"
            )
        return self


class HttpSettings(BaseModel):
    host: str = Field("0.0.0.0", description="Bind address of /metrics, /healthz, /readyz.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP endpoints.")


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line.")


class Settings(BaseSettings):
    """All of moderator's settings, grouped as the environment variables are."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the environ mapping and YAML data that `load_settings` resolved.
        return (init_settings,)


def _env_source(environ: Mapping[str, str]) -> dict[str, Any]:
    source = EnvSettingsSource(
        Settings,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        case_sensitive=False,
    )
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    return source()


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def known_env_vars() -> set[str]:
    """Every `MODERATOR_*` name the settings understand."""
    names = {CONFIG_FILE_VAR}
    for group, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for sub in model.model_fields:
            names.add(f"{ENV_PREFIX}{group}{NESTED_DELIMITER}{sub}".upper())
    return names


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """`MODERATOR_*` variables that match no setting: usually a typo worth reporting at start."""
    known = known_env_vars()
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Build the settings from an environment mapping (default `os.environ`) and a YAML file.

    Raises ConfigError whose message names each bad variable and what it expects.
    """
    env = dict(os.environ if environ is None else environ)
    path = config_file or (Path(env[CONFIG_FILE_VAR]) if env.get(CONFIG_FILE_VAR) else None)
    paths = secret_paths(Settings)
    secrets = env_secrets(env, paths, ENV_PREFIX, NESTED_DELIMITER)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            # `from None`: the chained PyYAML error would quote the line, secret and all.
            raise ConfigError(f"config file {path}: {yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of setting groups")
        data = loaded
        secrets |= secrets_in(data, paths)
    # The ConfigErrors below are raised `from None`: pydantic's own error text, which a
    # traceback would print as the cause, repeats every input, secrets included.
    try:
        data = _merge(data, _env_source(env))
        secrets |= secrets_in(data, paths)
        return Settings(**data)
    except ValidationError as exc:
        lines = [describe(e, paths, ENV_PREFIX, NESTED_DELIMITER) for e in exc.errors()]
        message = "invalid settings:\n  " + "\n  ".join(lines)
    except ValueError as exc:  # pydantic-settings raises this for unparsable JSON lists
        message = f"invalid settings: {exc}"
    raise ConfigError(mask(message, secrets)) from None


def iter_settings_rows() -> Iterator[tuple[str, str, str, str]]:
    """(env var, type, default, description) for every setting, in declaration order."""
    for group, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        defaults = model()
        for name, sub in model.model_fields.items():
            var = f"{ENV_PREFIX}{group}{NESTED_DELIMITER}{name}".upper()
            type_name = _type_name(sub.annotation)
            value = getattr(defaults, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            default = "" if value is None else _render(value)
            yield var, type_name, default, sub.description or ""


def _type_name(annotation: Any) -> str:
    """A reader's name for a type: `integer`, `one of: a, b`, `path (optional)`."""
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(annotation))
    if origin in (Union, UnionType):
        inner = _type_name(args[0]) if len(args) == 1 else " or ".join(map(_type_name, args))
        return f"{inner} (optional)"
    if origin is list:
        return f"list ({_type_name(args[0])}) as JSON"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation is SecretStr:
        return "secret string"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _render(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_markdown() -> str:
    """The README's settings table, generated so docs and code cannot drift."""
    rows = ["| Variable | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for var, type_name, default, desc in iter_settings_rows():
        cell = f"`{default}`" if default else ""
        type_cell = type_name.replace("|", "\\|")
        rows.append(f"| `{var}` | {type_cell} | {cell} | {desc} |")
    return "\n".join(rows)
