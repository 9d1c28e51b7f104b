"""Load the gateway's YAML configuration into frozen, validated models.

The file may hold `${VAR}` and `${VAR:-default}` anywhere in a value; they are
filled from the environment, so no secret has to live in the file. Every error
names its place (`models.gpt-4o[1].resource: unknown resource 'westus'`) and is
raised as one `ConfigError` listing all of them; nothing here prints or exits.

With no file, `config_from_env` builds the classic single-resource setup from
`AZURE_OPENAI_*` variables.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.azure import parse_endpoint
from app.config_errors import format_loc, pydantic_problems, tab_lines, yaml_problem

DEFAULT_PATH = Path("config/gateway.yaml")
DEFAULT_API_VERSION = "2024-10-21"
# Azure serves the Responses API on legacy resources only from 2025-03-01-preview.
DEFAULT_RESPONSES_API_VERSION = "2025-04-01-preview"
DEFAULT_RESPONSES_TTL_DAYS = 30.0
ENV_CONFIG = "AOAI_GATEWAY_CONFIG"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one line per problem."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))

    def render(self) -> str:
        lines = [f"invalid configuration ({self.source}):"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


def _one_line(value: SecretStr) -> SecretStr:
    """A key goes into an HTTP header: a CR/LF or other control character would split it."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value.get_secret_value()):
        raise ValueError(
            "contains a line break or another control character; a key is one line of "
            "text (check the variable or file it comes from)"
        )
    return value


Secret = Annotated[SecretStr, AfterValidator(_one_line)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Model):
    usd: float = Field(gt=0)
    period: Literal["day", "week", "month"] = "month"  # UTC calendar periods


class GatewayKey(_Model):
    name: str = Field(min_length=1)
    key: Secret | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: tuple[str, ...] | None = None
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    admin: bool = False
    budget: Budget | None = None


class GatewaySettings(_Model):
    keys: tuple[GatewayKey, ...] = ()
    cors_origins: tuple[str, ...] = ()
    # 26 MiB: a 25 MB audio upload (the transcription limit) and the form around it
    max_body_bytes: int = Field(default=26 * 1024 * 1024, gt=0)
    # an upstream answer read whole (not streamed) larger than this fails the attempt
    max_upstream_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # What one caller's connection may hold (app/listener.py; README, Security).
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    head_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=60.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)
    metrics_auth: bool = False  # /metrics needs an admin key (README, Security)


Api = Literal["v1", "legacy"]


def _endpoint(value: Any) -> Any:
    if isinstance(value, str):
        parse_endpoint(value)  # a ValueError says what to write instead
    return value


DEFAULT_ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
EntraCredential = Literal[
    "default", "managed_identity", "workload_identity", "azure_cli", "client_secret"
]


class Entra(_Model):
    """How a resource with `auth: entra` gets its Microsoft Entra ID token."""

    credential: EntraCredential = "default"
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: Secret | None = None
    scope: str = DEFAULT_ENTRA_SCOPE


class Resource(_Model):
    endpoint: Annotated[str, BeforeValidator(_endpoint)]
    auth: Literal["keys", "entra"] = "keys"  # validated before `keys`, which depends on it
    keys: tuple[Secret, ...] = Field(default=(), validate_default=True)
    entra: Entra | None = None
    api: Api = "v1"
    api_version: str | None = None
    responses_api_version: str | None = None  # legacy resources: the Responses API's version

    @model_validator(mode="before")
    @classmethod
    def _pasted_url(cls, data: Any) -> Any:
        """A pasted legacy URL's `?api-version=` is the form that resource answers:
        used when `api` and `api_version` leave it open (`check` reports it)."""
        if not isinstance(data, dict) or not isinstance(data.get("endpoint"), str):
            return data
        try:
            found = parse_endpoint(data["endpoint"])
        except ValueError:
            return data
        if (
            found.api_version
            and found.form != "v1"
            and data.get("api_version") is None
            and data.get("api") in (None, "legacy")
        ):
            return {**data, "api": "legacy", "api_version": found.api_version}
        return data

    @field_validator("keys")
    @classmethod
    def _keys_or_entra(cls, keys: tuple[SecretStr, ...], info: ValidationInfo) -> Any:
        auth = info.data.get("auth")  # None: `auth` itself is invalid, one error is enough
        if auth == "entra" and keys:
            raise ValueError("give either 'keys' or 'auth: entra', not both")
        if auth == "keys" and not keys:
            raise ValueError("needs at least one key (or 'auth: entra' for Microsoft Entra ID)")
        return keys


# A deployment name goes into a URL path: one segment, nothing to escape.
_DEPLOYMENT_NAME = re.compile(r"^[^/?#%\s]+$")


def _shorthand(value: Any) -> Any:
    """Accept `"eastus/gpt-4o"` for `{resource: eastus, deployment: gpt-4o}`."""
    if isinstance(value, str):
        resource, sep, deployment = value.partition("/")
        if not sep or not resource or not _DEPLOYMENT_NAME.match(deployment):
            raise ValueError(f"expected 'resource/deployment' or a mapping, got {value!r}")
        return {"resource": resource, "deployment": deployment}
    return value


def _deployment_name(value: Any) -> Any:
    if isinstance(value, str) and not _DEPLOYMENT_NAME.match(value):
        raise ValueError("must be a deployment name (no '/', '?', '#', '%' or spaces)")
    return value


class Deployment(_Model):
    resource: str
    deployment: Annotated[str, BeforeValidator(_deployment_name)]
    api: Api | None = None
    api_version: str | None = None
    priority: int = 0
    weight: float | None = Field(default=None, gt=0)  # None: list order within the priority
    reasoning: bool | None = None


DeploymentEntry = Annotated[Deployment, BeforeValidator(_shorthand)]


class Routing(_Model):
    first_byte_timeout: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    cooldown: float = Field(default=30.0, ge=0)
    rejected_key_ttl: float = Field(default=300.0, ge=0)
    connect_timeout: float = Field(default=10.0, gt=0)


class State(_Model):
    redis_url: str | None = None
    path: str | None = None
    # how long the gateway remembers where a stored response lives (Azure keeps them 30 days)
    responses_ttl_days: float = Field(default=DEFAULT_RESPONSES_TTL_DAYS, gt=0)


class PriceEntry(_Model):
    """USD per 1M tokens; images and audio also per image, audio minute, 1M characters
    (see app.pricing). An entry with one of those may leave the token prices out (0)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    image: float = Field(default=0, ge=0)
    audio_minute: float = Field(default=0, ge=0)
    characters: float = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _units_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(u in data for u in MEDIA_UNITS):
            return {"input": 0, "output": 0, **data}
        return data


MEDIA_UNITS = ("image", "audio_minute", "characters")


class Config(_Model):
    gateway: GatewaySettings = GatewaySettings()
    resources: dict[str, Resource] = Field(default_factory=dict)
    models: dict[str, tuple[DeploymentEntry, ...]] = Field(default_factory=dict)
    routing: Routing = Routing()
    state: State = State()
    pricing: dict[str, PriceEntry] = Field(default_factory=dict)  # model or resource/deployment


# --- loading -----------------------------------------------------------------


def resolve_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """Which file to read: `--config`, else `$AOAI_GATEWAY_CONFIG`, else the default if present."""
    if cli_path:
        return Path(cli_path)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate one YAML file."""
    text = read_text(path)
    return parse(text, os.environ if environ is None else environ, source=str(path))


def read_text(path: Path) -> str:
    """A configuration file's text, or a `ConfigError` saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"cannot read {path}: not UTF-8 text (byte {exc.start})"], str(path)
        ) from None


def parse(text: str, environ: Mapping[str, str], source: str = "config") -> Config:
    # `${VAR}` is not a valid plain scalar inside YAML flow collections
    # (`keys: [${K1}, ${K2}]`), so each one is swapped for a placeholder
    # before parsing and filled in afterwards, where its place is known.
    env = _Interpolation(environ)
    try:
        raw = yaml.load(_VAR.sub(env.swap, text), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        tabs = tab_lines(text)
        problem = yaml_problem(exc)
        raise ConfigError(tabs if tabs and "tab" in problem else [*tabs, problem], source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping (name: value lines)"], source)
    filled = env.fill(raw, ())
    return validate(filled, source, env.errors, env.missing)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Checked before merge keys (`<<: *base`) are flattened: overriding a merged
    # value is what merging is for.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _Interpolation:
    """`${VAR}` -> placeholder before YAML parsing; placeholder -> value after it.

    The placeholders carry a random token, so no text in a file can pass for one.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.refs: list[tuple[str, str | None]] = []
        self.errors: list[str] = []
        self.missing: set[str] = set()  # places whose variable is not set
        self.token = f"__aoai_env_{os.urandom(6).hex()}_"
        self.placeholder = re.compile(re.escape(self.token) + r"(\d+)__")

    def swap(self, m: re.Match[str]) -> str:
        self.refs.append((m.group(1), m.group(2)))
        return f"{self.token}{len(self.refs) - 1}__"

    def fill(self, node: Any, loc: tuple[str | int, ...]) -> Any:
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            for k, v in node.items():
                known = len(self.errors)
                key = self.text(k, loc, "a key in ") if isinstance(k, str) else k
                if key in out and len(self.errors) == known:
                    self.errors.append(f"{format_loc((*loc, str(key)))}: given twice")
                out[key] = self.fill(v, (*loc, str(key)))
            return out
        if isinstance(node, list):
            return [self.fill(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, str):
            return self.text(node, loc)
        return node

    def text(self, node: str, loc: tuple[str | int, ...], where: str = "") -> str:
        if self.token not in node:
            return node

        def value(m: re.Match[str]) -> str:
            name, default = self.refs[int(m.group(1))]
            got = self.environ.get(name)
            if got is None or (got == "" and default is not None):
                if default is not None:
                    return default
                self.errors.append(f"{name} is not set ({where}{format_loc(loc)})")
                self.missing.add(format_loc(loc))
                return ""
            return got

        return self.placeholder.sub(value, node)


def validate(
    data: dict[str, Any],
    source: str = "config",
    prior: list[str] | None = None,
    missing: set[str] | frozenset[str] = frozenset(),
) -> Config:
    """Every problem at once: `prior` ones (unset variables), then the schema's,
    then the cross-references; a place already blamed on an unset variable is
    not blamed again."""
    errors = list(prior or [])
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors += pydantic_problems(exc.errors())
        errors += _raw_references(data)
    if config is not None:
        errors += check_references(config)
    errors = [e for e in errors if e.partition(":")[0] not in missing]
    if errors or config is None:
        raise ConfigError(errors, source)
    return config


def _raw_references(data: dict[str, Any]) -> list[str]:
    """Unknown resources, when the schema failed elsewhere and `check_references` can't run."""
    resources, models = data.get("resources"), data.get("models")
    if not isinstance(resources, dict) or not isinstance(models, dict):
        return []
    errors = []
    for model, entries in models.items():
        for i, dep in enumerate(entries if isinstance(entries, list) else []):
            name = dep.get("resource") if isinstance(dep, dict) else None
            if isinstance(dep, str):
                name = dep.partition("/")[0]
            if isinstance(name, str) and name and name not in resources:
                errors.append(f"models.{model}[{i}].resource: unknown resource '{name}'")
    return errors


def check_references(config: Config) -> list[str]:
    """Cross-field rules pydantic cannot see one field at a time."""
    errors: list[str] = []
    seen_names: set[str] = set()
    seen_digests: dict[str, int] = {}
    for i, key in enumerate(config.gateway.keys):
        where = f"gateway.keys[{i}]"
        if (key.key is None) == (key.key_sha256 is None):
            errors.append(f"{where}: give exactly one of 'key' or 'key_sha256'")
        if key.key is not None and not key.key.get_secret_value():
            errors.append(f"{where}.key: is empty")
        if key.name in seen_names:
            errors.append(f"{where}.name: duplicate key name '{key.name}'")
        seen_names.add(key.name)
        if key.key is not None:
            d = hashlib.sha256(key.key.get_secret_value().encode()).hexdigest()
        else:
            d = (key.key_sha256 or "").lower()
        if not d:
            continue
        if d in seen_digests:  # which caller would it be? (the value itself is never shown)
            errors.append(f"{where}: the same key as gateway.keys[{seen_digests[d]}]")
        else:
            seen_digests[d] = i
    for name, res in config.resources.items():
        errors += _resource_auth_errors(f"resources.{name}", res)
    for model, entries in config.models.items():
        if not entries:
            errors.append(f"models.{model}: needs at least one deployment")
        for i, dep in enumerate(entries):
            if dep.resource not in config.resources:
                errors.append(f"models.{model}[{i}].resource: unknown resource '{dep.resource}'")
    for name in config.pricing:
        resource, sep, _ = name.partition("/")
        if sep and resource not in config.resources:
            errors.append(f"pricing.{name}: unknown resource '{resource}'")
    return errors


def _resource_auth_errors(where: str, res: Resource) -> list[str]:
    """Keys or Entra ID, never both; the Entra settings each credential needs."""
    if res.auth == "keys":
        if res.entra is not None:
            return [f"{where}.entra: only used with 'auth: entra'"]
        return [
            f"{where}.keys[{i}]: is empty"
            for i, k in enumerate(res.keys)
            if not k.get_secret_value()
        ]
    entra = res.entra or Entra()
    if entra.credential == "client_secret":
        missing = [
            f"{where}.entra.{n}: is required with credential client_secret"
            for n in ("client_id", "tenant_id", "client_secret")
            if not getattr(entra, n)
        ]
        secret = entra.client_secret
        if secret is not None and not secret.get_secret_value():
            missing.append(f"{where}.entra.client_secret: is empty")
        return missing
    if entra.client_secret is not None:
        return [f"{where}.entra.client_secret: only used with credential client_secret"]
    return []


# --- the classic single-resource setup from the environment -------------------


ENV_GATEWAY_KEY = "AOAI_GATEWAY_KEY"
ENV_REDIS_URL = "AOAI_GATEWAY_REDIS_URL"


def with_env_redis(config: Config, environ: Mapping[str, str]) -> Config:
    """`AOAI_GATEWAY_REDIS_URL` as `state.redis_url` when the configuration sets none.

    docker-compose.yml sets it to its own Redis, so replicas share cooldowns,
    limits and usage with any configuration; one that names its own Redis wins.
    """
    url = environ.get(ENV_REDIS_URL)
    if not url or config.state.redis_url:
        return config
    return config.model_copy(update={"state": config.state.model_copy(update={"redis_url": url})})


_ENV_NEEDED = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENTS")
_ENV_MEANING = {
    "AZURE_OPENAI_ENDPOINT": "the resource's URL, https://NAME.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "the resource's key 1",
}
_ENV_ANY = (
    *_ENV_NEEDED,
    "AZURE_OPENAI_API_KEY_2",
    "AZURE_OPENAI_API_VERSION",
    "AZURE_OPENAI_AUTH",
    ENV_GATEWAY_KEY,
)


def config_from_env(environ: Mapping[str, str]) -> Config | None:
    """`AZURE_OPENAI_ENDPOINT` + key(s) + deployments, or None when none is set.

    `AOAI_GATEWAY_KEY`, if set, is the one gateway key (named `default`, admin),
    so the gateway may serve beyond loopback without a file.
    """
    if not any(environ.get(name) for name in _ENV_ANY):
        return None
    endpoint = environ.get("AZURE_OPENAI_ENDPOINT", "")
    auth = environ.get("AZURE_OPENAI_AUTH", "").strip().lower() or "keys"
    errors = [
        f"{name} is not set: {_ENV_MEANING[name]}"
        for name in _ENV_NEEDED[: 1 if auth == "entra" else 2]  # Entra ID: no key
        if not environ.get(name)
    ]
    found = None
    if endpoint:
        try:
            found = parse_endpoint(endpoint)
        except ValueError as exc:
            errors.append(f"AZURE_OPENAI_ENDPOINT: {exc}")
    keys = [environ.get("AZURE_OPENAI_API_KEY", ""), environ.get("AZURE_OPENAI_API_KEY_2", "")]
    if auth not in ("keys", "key", "entra"):
        errors.append(f"AZURE_OPENAI_AUTH: must be 'entra' or 'keys', got {auth!r}")
    elif auth == "entra" and any(keys):
        errors.append("AZURE_OPENAI_AUTH=entra: unset AZURE_OPENAI_API_KEY (keys or Entra ID)")
    keys = [k for k in keys if k]
    names = [d.strip() for d in environ.get("AZURE_OPENAI_DEPLOYMENTS", "").split(",") if d.strip()]
    if not names and found is not None and found.deployment:
        names = [found.deployment]  # the one deployment named in the pasted URL
    if not names:
        errors.append("AZURE_OPENAI_DEPLOYMENTS is not set: a comma list of deployment names")
    if errors:
        raise ConfigError(errors, "environment")
    version = environ.get("AZURE_OPENAI_API_VERSION")
    resource: dict[str, Any] = {"endpoint": endpoint}
    resource.update({"auth": "entra"} if auth == "entra" else {"keys": keys})
    if version:
        resource.update(api="legacy", api_version=version)
    data: dict[str, Any] = {
        "resources": {"azure": resource},
        "models": {n: [{"resource": "azure", "deployment": n}] for n in names},
    }
    gateway_key = environ.get(ENV_GATEWAY_KEY)
    if gateway_key:
        data["gateway"] = {"keys": [{"name": "default", "key": gateway_key, "admin": True}]}
    return validate(data, "environment")
