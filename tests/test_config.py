"""app/config.py: interpolation, validation with path-precise errors, sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.config import (
    DEFAULT_API_VERSION,
    DEFAULT_PATH,
    ENV_CONFIG,
    Config,
    ConfigError,
    Entra,
    config_from_env,
    load,
    parse,
    resolve_path,
)
from app.routing import build_table
from tests.conftest import ROOT
from tests.test_cli import run

RESOURCES = """
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com
    keys: [k1]
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env or {})
    return info.value.errors


# --- ${VAR} interpolation -------------------------------------------------------


def test_var_is_filled_from_the_environment() -> None:
    config = parse(
        "gateway:\n  keys:\n    - name: alice\n      key: ${ALICE_GATEWAY_KEY}\n",
        {"ALICE_GATEWAY_KEY": "s3cret-alice"},
    )
    key = config.gateway.keys[0].key
    assert key is not None and key.get_secret_value() == "s3cret-alice"


def test_vars_inside_a_flow_sequence() -> None:
    text = """
resources:
  eastus:
    endpoint: https://x.openai.azure.com
    keys: [${K1}, ${K2}]
"""
    config = parse(text, {"K1": "first", "K2": "second"})
    keys = [k.get_secret_value() for k in config.resources["eastus"].keys]
    assert keys == ["first", "second"]


def test_values_with_yaml_syntax_are_taken_literally() -> None:
    # the value is filled after parsing: YAML never sees it
    text = "resources:\n  e: {endpoint: 'https://x', keys: [${K1}, ${K2}]}\n"
    config = parse(text, {"K1": "a: b, c", "K2": "[x] # y"})
    assert [k.get_secret_value() for k in config.resources["e"].keys] == ["a: b, c", "[x] # y"]


def test_default_used_when_unset_or_empty_and_var_inside_a_longer_string() -> None:
    text = """
resources:
  e:
    endpoint: https://${HOST:-default-host}.openai.azure.com/
    keys: ["pre-${K}-mid-${K2:-dflt}-post"]
    api_version: ${VER:-2025-01-01}
"""
    config = parse(text, {"K": "X", "K2": "", "VER": "2024-06-01"})
    res = config.resources["e"]
    assert res.endpoint == "https://default-host.openai.azure.com/"
    assert res.keys[0].get_secret_value() == "pre-X-mid-dflt-post"
    assert res.api_version == "2024-06-01"


def test_empty_default_is_allowed() -> None:
    config = parse("state:\n  redis_url: ${REDIS:-}\n", {})
    assert config.state.redis_url == ""


def test_interpolated_numbers_are_coerced() -> None:
    config = parse("gateway:\n  max_body_bytes: ${MAX:-2048}\n", {})
    assert config.gateway.max_body_bytes == 2048


def test_missing_variable_is_named_with_its_place() -> None:
    text = "gateway:\n  keys:\n    - name: alice\n      key: ${ALICE_GATEWAY_KEY}\n"
    assert errors_of(text) == ["ALICE_GATEWAY_KEY is not set (gateway.keys[0].key)"]


def test_every_missing_variable_is_listed() -> None:
    text = RESOURCES.replace("keys: [k1]", "keys: [${EASTUS_KEY1}, ${EASTUS_KEY2}]")
    assert errors_of(text, {"EASTUS_KEY1": "x"}) == [
        "EASTUS_KEY2 is not set (resources.eastus.keys[1])"
    ]


def test_vars_in_mapping_keys_are_filled() -> None:
    text = """
resources:
  ${REGION:-eastus}: {endpoint: "https://a", keys: [k]}
models:
  ${MODEL}: [eastus/d]
  ${OTHER}: [eastus/d]
"""
    config = parse(text, {"MODEL": "gpt-4o", "OTHER": "o3"})
    assert list(config.resources) == ["eastus"]
    assert list(config.models) == ["gpt-4o", "o3"]
    assert errors_of(text, {"MODEL": "gpt-4o", "OTHER": "gpt-4o"}) == ["models.gpt-4o: given twice"]
    assert errors_of(text) == [
        "MODEL is not set (a key in models)",
        "OTHER is not set (a key in models)",
    ]


def test_placeholder_lookalikes_in_the_file_stay_literal() -> None:
    text = RESOURCES + "models:\n  a__aoai_env_0__: [eastus/d]\n# __aoai_env_9__\n"
    config = parse(text, {})
    assert list(config.models) == ["a__aoai_env_0__"]


def test_var_in_a_comment_is_ignored() -> None:
    config = parse(RESOURCES + "# key: ${NOT_SET_ANYWHERE}\n", {})
    assert "eastus" in config.resources


# --- validation errors name their place ---------------------------------------------


def test_unknown_resource_is_named() -> None:
    text = (
        RESOURCES
        + """
models:
  gpt-4o:
    - eastus/gpt-4o
    - {resource: westus, deployment: gpt-4o}
"""
    )
    assert errors_of(text) == ["models.gpt-4o[1].resource: unknown resource 'westus'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resorces: {}\n", "resorces: unknown key (check the spelling)"),
        (
            "resources:\n  e: {endpiont: 'https://x', endpoint: 'https://x', keys: [a]}\n",
            "resources.e.endpiont: unknown key (check the spelling)",
        ),
        ("gateway:\n  keys:\n    - {name: a, key: b, modles: [x]}\n", "gateway.keys[0].modles"),
        ("routing:\n  cooldwon: 3\n", "routing.cooldwon: unknown key"),
        (RESOURCES + "models:\n  m: [{resource: eastus, deployment: d, wieght: 2}]\n", "m[0]"),
    ],
)
def test_unknown_keys_are_rejected_with_their_path(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(expected in e and "unknown key" in e for e in errors), errors


def test_invalid_yaml_names_the_line() -> None:
    errors = errors_of("gateway:\n  keys: [\n    a\nresources: {}\n")
    assert len(errors) == 1
    assert errors[0].startswith("not valid YAML at line ")
    assert "line 4" in errors[0]


def test_duplicate_mapping_keys_are_errors() -> None:
    text = RESOURCES + "models:\n  gpt-4o: [eastus/a]\n  gpt-4o: [eastus/b]\n"
    errors = errors_of(text)
    assert len(errors) == 1
    assert "duplicate key 'gpt-4o'" in errors[0]
    assert "line 8" in errors[0]


def test_merge_keys_may_override_and_odd_keys_do_not_crash() -> None:
    text = """
base: &base {endpoint: "https://a", keys: [k], api: legacy}
"""
    errors = errors_of(text)
    assert errors == ["base: unknown key (check the spelling)"]
    text = """
resources:
  a: &base {endpoint: "https://a", keys: [k], api: legacy}
  b:
    <<: *base
    endpoint: "https://b"
"""
    config = parse(text, {})
    assert config.resources["b"].endpoint == "https://b"
    assert config.resources["b"].api == "legacy"
    errors = errors_of("? [a, b]\n: c\n")
    assert len(errors) == 1 and errors[0].startswith("not valid YAML at line 1")


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of("- a\n") == ["the top level must be a mapping (name: value lines)"]


def test_empty_file_is_an_empty_config() -> None:
    assert parse("", {}) == Config()


def test_bad_endpoint_and_empty_keys() -> None:
    errors = errors_of("resources:\n  e: {endpoint: 'ftp://x', keys: []}\n")
    assert any(e.startswith("resources.e.endpoint: ") and "http" in e for e in errors), errors
    assert any(e.startswith("resources.e.keys: ") for e in errors), errors


def test_bad_api_value() -> None:
    errors = errors_of(RESOURCES.replace("keys: [k1]", "keys: [k1]\n    api: v2"))
    assert len(errors) == 1 and errors[0].startswith("resources.eastus.api: ")


def test_empty_resource_key_is_an_error() -> None:
    text = "resources:\n  e: {endpoint: 'https://x', keys: ['${K:-}']}\n"
    assert errors_of(text) == ["resources.e.keys[0]: is empty"]


def test_model_without_deployments() -> None:
    assert errors_of(RESOURCES + "models:\n  m: []\n") == [
        "models.m: needs at least one deployment"
    ]


def test_missing_required_field() -> None:
    assert errors_of(RESOURCES + "models:\n  m: [{resource: eastus}]\n") == [
        "models.m[0].deployment: is required"
    ]


# --- shorthand and deployments ---------------------------------------------------------


def test_shorthand_is_resource_slash_deployment() -> None:
    config = parse(RESOURCES + "models:\n  gpt-4o: [eastus/gpt-4o-prod]\n", {})
    dep = config.models["gpt-4o"][0]
    assert (dep.resource, dep.deployment) == ("eastus", "gpt-4o-prod")


@pytest.mark.parametrize("bad", ["eastus", "/gpt-4o", "eastus/", "eastus/a/b", "eastus/a b"])
def test_bad_shorthand(bad: str) -> None:
    errors = errors_of(RESOURCES + f"models:\n  m: ['{bad}']\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith("models.m[0]: ")
    assert "resource/deployment" in errors[0] or "deployment" in errors[0]
    assert "Value error" not in errors[0]


def test_deployment_name_with_a_slash_is_rejected() -> None:
    errors = errors_of(RESOURCES + "models:\n  m: [{resource: eastus, deployment: 'a/b'}]\n")
    assert len(errors) == 1 and errors[0].startswith("models.m[0].deployment: "), errors


# --- key vs key_sha256 ------------------------------------------------------------------


def test_key_or_key_sha256_exactly_one() -> None:
    digest = hashlib.sha256(b"z").hexdigest()
    text = f"""
gateway:
  keys:
    - {{name: none}}
    - {{name: both, key: x, key_sha256: "{digest}"}}
    - {{name: plain, key: y}}
    - {{name: hashed, key_sha256: "{digest.upper()}"}}
    - {{name: none2}}
"""
    assert errors_of(text) == [
        "gateway.keys[0]: give exactly one of 'key' or 'key_sha256'",
        "gateway.keys[1]: give exactly one of 'key' or 'key_sha256'",
        "gateway.keys[4]: give exactly one of 'key' or 'key_sha256'",
    ]


def test_key_sha256_must_be_hex() -> None:
    errors = errors_of("gateway:\n  keys:\n    - {name: a, key_sha256: nothex}\n")
    assert len(errors) == 1 and errors[0].startswith("gateway.keys[0].key_sha256: ")


def test_duplicate_gateway_key_names_and_values() -> None:
    digest = hashlib.sha256(b"same-value").hexdigest()
    text = f"""
gateway:
  keys:
    - {{name: a, key: same-value}}
    - {{name: a, key: other}}
    - {{name: c, key_sha256: "{digest}"}}
"""
    errors = errors_of(text)
    assert "gateway.keys[1].name: duplicate key name 'a'" in errors
    assert "gateway.keys[2]: the same key as gateway.keys[0]" in errors
    assert not any("same-value" in e for e in errors)


# --- endpoints, api forms and versions ------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://x.openai.azure.com",
        "https://x.openai.azure.com/",
        "https://x.openai.azure.com/openai",
        "https://x.openai.azure.com/openai/",
        "https://x.openai.azure.com/openai/v1",
        "https://x.openai.azure.com/openai/v1/",
    ],
)
def test_endpoint_forms_give_the_same_urls(endpoint: str) -> None:
    text = f"""
resources:
  v1: {{endpoint: "{endpoint}", keys: [k]}}
  old: {{endpoint: "{endpoint}", keys: [k], api: legacy}}
models:
  m: [v1/dep, old/dep]
"""
    t1, t2 = build_table(parse(text, {}))["m"]
    assert t1.url == "https://x.openai.azure.com/openai/v1/chat/completions"
    assert t2.url == (
        "https://x.openai.azure.com/openai/deployments/dep/chat/completions"
        f"?api-version={DEFAULT_API_VERSION}"
    )


def test_a_pasted_portal_url_keeps_the_origin_and_uses_its_api_version() -> None:
    portal = "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
    text = f"""
resources:
  pasted: {{endpoint: "{portal}?api-version=2024-06-01", keys: [k]}}
  forced: {{endpoint: "{portal}?api-version=2024-06-01", keys: [k], api: v1}}
  sdk: {{endpoint: "https://x.openai.azure.com/openai/v1/chat/completions", keys: [k]}}
  bare: {{endpoint: "https://x.openai.azure.com/openai/deployments/gpt-4o", keys: [k]}}
models:
  m: [pasted/dep, forced/dep, sdk/dep, bare/dep]
"""
    pasted, forced, sdk, bare = build_table(parse(text, {}))["m"]
    assert pasted.url == (
        "https://x.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-06-01"
    )
    assert (
        forced.url
        == sdk.url
        == bare.url
        == ("https://x.openai.azure.com/openai/v1/chat/completions")
    )


def test_an_endpoint_the_gateway_cannot_use_names_the_field() -> None:
    text = """
resources:
  a: {endpoint: "https://x.openai.azure.com/openai/responses?api-version=x", keys: [k]}
"""
    (error,) = errors_of(text)
    assert error.startswith("resources.a.endpoint: the path /openai/responses is not")
    assert error.endswith("write just https://x.openai.azure.com")


def test_env_endpoint_from_the_portal_gives_deployment_and_version() -> None:
    config = env_config(
        AZURE_OPENAI_ENDPOINT="https://x.openai.azure.com/openai/deployments/gpt-4o/"
        "chat/completions?api-version=2024-10-21",
        AZURE_OPENAI_API_KEY="key-one",
        AOAI_GATEWAY_KEY="gw-key",
    )
    assert config is not None
    (target,) = build_table(config)["gpt-4o"]
    assert target.url == (
        "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
        "?api-version=2024-10-21"
    )
    (key,) = config.gateway.keys
    assert (key.name, key.admin) == ("default", True)
    assert key.key is not None and key.key.get_secret_value() == "gw-key"


def test_api_defaults_to_v1_and_legacy_version_defaults() -> None:
    assert DEFAULT_API_VERSION == "2024-10-21"
    text = """
resources:
  a: {endpoint: "https://a", keys: [k]}
  b: {endpoint: "https://b", keys: [k], api: legacy}
  c: {endpoint: "https://c", keys: [k], api: legacy, api_version: "2025-04-01-preview"}
models:
  m: [a/d, b/d, c/d]
"""
    config = parse(text, {})
    assert config.resources["a"].api == "v1"
    a, b, c = build_table(config)["m"]
    assert (a.api, a.api_version) == ("v1", None)
    assert (b.api, b.api_version) == ("legacy", "2024-10-21")
    assert (c.api, c.api_version) == ("legacy", "2025-04-01-preview")
    assert c.url.endswith("?api-version=2025-04-01-preview")


def test_deployment_overrides_api_and_version() -> None:
    text = """
resources:
  a: {endpoint: "https://a", keys: [k]}
  b: {endpoint: "https://b", keys: [k], api: legacy, api_version: "2024-06-01"}
models:
  m:
    - {resource: a, deployment: d1, api: legacy}
    - {resource: a, deployment: d2, api: legacy, api_version: "2025-01-01"}
    - {resource: b, deployment: d3, api: v1}
    - {resource: b, deployment: d4, api_version: "2025-02-02"}
"""
    d1, d2, d3, d4 = build_table(parse(text, {}))["m"]
    assert d1.url == "https://a/openai/deployments/d1/chat/completions?api-version=2024-10-21"
    assert d2.url == "https://a/openai/deployments/d2/chat/completions?api-version=2025-01-01"
    assert (d3.api, d3.api_version, d3.url) == ("v1", None, "https://b/openai/v1/chat/completions")
    assert d4.url == "https://b/openai/deployments/d4/chat/completions?api-version=2025-02-02"


def test_the_issue_example_is_valid() -> None:
    env = {
        n: n.lower()
        for n in (
            "ALICE_GATEWAY_KEY",
            "CI_BOT_KEY",
            "EASTUS_KEY1",
            "EASTUS_KEY2",
            "SWEDEN_KEY1",
            "SWEDEN_KEY2",
        )
    }
    text = """
gateway:
  keys:
    - name: alice
      key: ${ALICE_GATEWAY_KEY}
    - name: ci-bot
      key: ${CI_BOT_KEY}
      models: [gpt-4o-mini]
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com
    keys: [${EASTUS_KEY1}, ${EASTUS_KEY2}]
    api: v1
  sweden:
    endpoint: https://contoso-sweden.services.ai.azure.com
    keys: [${SWEDEN_KEY1}, ${SWEDEN_KEY2}]
    api: legacy
    api_version: "2024-10-21"
models:
  gpt-5.2-chat:
    - {resource: eastus, deployment: gpt-5.2-chat}
  gpt-4o:
    - {resource: sweden, deployment: gpt4o-prod}
    - {resource: eastus, deployment: gpt-4o}
"""
    config = parse(text, env)
    assert config.gateway.keys[1].models == ("gpt-4o-mini",)
    assert [d.resource for d in config.models["gpt-4o"]] == ["sweden", "eastus"]


def test_shipped_example_config_is_valid() -> None:
    text = (ROOT / "config" / "example.yaml").read_text()
    names = set(__import__("re").findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    config = parse(text, {n: f"value-of-{n}" for n in names})
    assert config.models


def test_config_is_frozen() -> None:
    config = parse(RESOURCES, {})
    with pytest.raises(Exception, match="frozen"):
        config.resources["eastus"].api = "legacy"  # type: ignore[misc]


# --- files and sources --------------------------------------------------------------------


def test_load_reads_a_file_with_the_given_environment(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(RESOURCES.replace("[k1]", "[${K}]"))
    config = load(path, {"K": "from-env"})
    assert config.resources["eastus"].keys[0].get_secret_value() == "from-env"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml", {})
    assert info.value.errors[0].startswith(f"cannot read {tmp_path / 'nope.yaml'}")
    assert str(tmp_path / "nope.yaml") in info.value.render()


def test_load_a_directory_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, {})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError) as info:
        load(binary, {})
    assert "UTF-8" in info.value.errors[0]


def test_resolve_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {ENV_CONFIG: "/from/env.yaml"}
    assert resolve_path("cli.yaml", env) == Path("cli.yaml")
    assert resolve_path(None, env) == Path("/from/env.yaml")
    assert resolve_path(None, {}) is None  # no default file here
    assert resolve_path(None, {ENV_CONFIG: ""}) is None
    DEFAULT_PATH.parent.mkdir(parents=True)
    DEFAULT_PATH.write_text(RESOURCES)
    assert resolve_path(None, {}) == DEFAULT_PATH
    assert resolve_path(None, env) == Path("/from/env.yaml")
    assert resolve_path("cli.yaml", env) == Path("cli.yaml")


# --- AZURE_OPENAI_* quick start ---------------------------------------------------------------


def env_config(**env: str) -> Config | None:
    return config_from_env(env)


def test_no_azure_variable_means_no_env_config() -> None:
    assert env_config(HOME="/root") is None


def test_a_missing_endpoint_is_named_when_other_variables_are_set() -> None:
    with pytest.raises(ConfigError) as info:
        env_config(AZURE_OPENAI_API_KEY="k")
    assert info.value.errors == [
        "AZURE_OPENAI_ENDPOINT is not set: the resource's URL, https://NAME.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENTS is not set: a comma list of deployment names",
    ]


def test_env_v1_without_version() -> None:
    config = env_config(
        AZURE_OPENAI_ENDPOINT="https://x.openai.azure.com/",
        AZURE_OPENAI_API_KEY="key-one",
        AZURE_OPENAI_DEPLOYMENTS="gpt-4o, gpt-4o-mini,,",
    )
    assert config is not None
    table = build_table(config)
    assert list(table) == ["gpt-4o", "gpt-4o-mini"]
    (target,) = table["gpt-4o"]
    assert target.api == "v1"
    assert target.url == "https://x.openai.azure.com/openai/v1/chat/completions"
    assert target.deployment == "gpt-4o"
    assert [k.value for k in target.keys] == ["key-one"]


def test_env_legacy_with_version_and_second_key() -> None:
    config = env_config(
        AZURE_OPENAI_ENDPOINT="https://x.openai.azure.com",
        AZURE_OPENAI_API_KEY="key-one",
        AZURE_OPENAI_API_KEY_2="key-two",
        AZURE_OPENAI_API_VERSION="2024-06-01",
        AZURE_OPENAI_DEPLOYMENTS="gpt-4o",
    )
    assert config is not None
    (target,) = build_table(config)["gpt-4o"]
    assert (target.api, target.api_version) == ("legacy", "2024-06-01")
    assert target.url.endswith("/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01")
    assert [k.value for k in target.keys] == ["key-one", "key-two"]
    assert config.gateway.keys == ()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AZURE_OPENAI_DEPLOYMENTS": "gpt-4o"},
            ["AZURE_OPENAI_API_KEY is not set: the resource's key 1"],
        ),
        (
            {"AZURE_OPENAI_API_KEY_2": "k2", "AZURE_OPENAI_DEPLOYMENTS": "gpt-4o"},
            ["AZURE_OPENAI_API_KEY is not set: the resource's key 1"],
        ),
        (
            {"AZURE_OPENAI_API_KEY": "k"},
            ["AZURE_OPENAI_DEPLOYMENTS is not set: a comma list of deployment names"],
        ),
        (
            {},
            [
                "AZURE_OPENAI_API_KEY is not set: the resource's key 1",
                "AZURE_OPENAI_DEPLOYMENTS is not set: a comma list of deployment names",
            ],
        ),
    ],
)
def test_env_errors_when_parts_are_missing(env: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", **env})
    assert info.value.errors == expected
    assert info.value.source == "environment"


def test_env_bad_endpoint_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        env_config(
            AZURE_OPENAI_ENDPOINT="x.openai.azure.com",
            AZURE_OPENAI_API_KEY="secret-k",
            AZURE_OPENAI_DEPLOYMENTS="d",
        )
    assert info.value.errors[0].startswith("AZURE_OPENAI_ENDPOINT: ")
    assert "secret-k" not in info.value.render()


# --- the CLI path: exit 2, path-precise lines, no traceback ------------------------------------


def test_check_bad_config_exits_2_with_precise_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
gateway:
  keys:
    - name: alice
      key: ${ALICE_GATEWAY_KEY}
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com
    keys: [k1]
models:
  gpt-4o: [eastus/gpt-4o]
"""
    )
    result = run("check", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "ALICE_GATEWAY_KEY is not set (gateway.keys[0].key)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    bad.write_text(
        RESOURCES + "resorces: {}\nmodels:\n  gpt-4o: [eastus/a, {resource: westus, deployment: b}]"
    )
    result = run("check", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "  - resorces: unknown key (check the spelling)" in lines
    assert result.stdout == ""
    assert "Traceback" not in result.stdout + result.stderr

    bad.write_text(RESOURCES + "models:\n  gpt-4o: [eastus/a, {resource: westus, deployment: b}]")
    result = run("check", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "  - models.gpt-4o[1].resource: unknown resource 'westus'" in result.stderr.splitlines()


@pytest.mark.parametrize("content", [None, b"a: [\n", b"\xff\xfe\x00\x01"])
def test_check_unreadable_configs_exit_2_without_traceback(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_check_with_nothing_configured_says_how(tmp_path: Path) -> None:
    result = run("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "no configuration" in result.stderr and "--config" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_check_uses_env_var_config_then_default_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.yaml").write_text(
        RESOURCES + "models:\n  from-default: [eastus/d]\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text(RESOURCES + "models:\n  from-env-var: [eastus/d]\n")
    result = run("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from-default" in result.stdout
    result = run("check", cwd=tmp_path, env={ENV_CONFIG: str(other)})
    assert result.returncode == 0, result.stderr
    assert "from-env-var" in result.stdout and "from-default" not in result.stdout
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(RESOURCES + "models:\n  from-flag: [eastus/d]\n")
    result = run("check", "--config", str(explicit), cwd=tmp_path, env={ENV_CONFIG: str(other)})
    assert result.returncode == 0, result.stderr
    assert "from-flag" in result.stdout and "from-env-var" not in result.stdout


def test_check_from_azure_openai_env(tmp_path: Path) -> None:
    result = run(
        "check",
        cwd=tmp_path,
        env={
            "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com",
            "AZURE_OPENAI_API_KEY": "distinctive-env-key-123",
            "AZURE_OPENAI_DEPLOYMENTS": "gpt-4o",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "environment (AZURE_OPENAI_*)" in result.stdout
    assert "gpt-4o" in result.stdout
    assert "distinctive-env-key-123" not in result.stdout + result.stderr


# --- auth: entra (issue 13) ----------------------------------------------------------


def entra_resource(extra: str) -> str:
    return "resources:\n  e:\n    endpoint: https://e.openai.azure.com\n" + extra


def test_entra_resource_needs_no_keys_and_defaults() -> None:
    config = parse(entra_resource("    auth: entra\n"), {})
    res = config.resources["e"]
    assert (res.auth, res.keys, res.entra) == ("entra", (), None)
    full = parse(
        entra_resource(
            "    auth: entra\n    entra:\n      credential: client_secret\n"
            "      client_id: ${CID}\n      tenant_id: ${TID}\n      client_secret: ${SECRET}\n"
            "      scope: https://ai.azure.com/.default\n"
        ),
        {"CID": "c", "TID": "t", "SECRET": "s"},
    )
    entra = full.resources["e"].entra
    assert entra is not None and entra.credential == "client_secret"
    assert entra.client_secret is not None and entra.client_secret.get_secret_value() == "s"
    assert "'s'" not in repr(full)
    assert Entra().scope == "https://cognitiveservices.azure.com/.default"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    auth: entra\n    keys: [k1]\n",
            ["resources.e.keys: give either 'keys' or 'auth: entra', not both"],
        ),
        (
            "    entra: {credential: azure_cli}\n",
            ["resources.e.keys: needs at least one key (or 'auth: entra' for Microsoft Entra ID)"],
        ),
        (
            "    keys: [k1]\n    entra: {credential: azure_cli}\n",
            ["resources.e.entra: only used with 'auth: entra'"],
        ),
        (
            "    auth: entra\n    entra: {credential: client_secret, client_id: c}\n",
            [
                "resources.e.entra.tenant_id: is required with credential client_secret",
                "resources.e.entra.client_secret: is required with credential client_secret",
            ],
        ),
        (
            "    auth: entra\n    entra: {credential: managed_identity, client_secret: s}\n",
            ["resources.e.entra.client_secret: only used with credential client_secret"],
        ),
        ("    auth: entra\n    entra: {credential: certificate}\n", None),
        ("    auth: token\n", None),
    ],
)
def test_entra_configuration_errors(extra: str, expected: list[str] | None) -> None:
    errors = errors_of(entra_resource(extra))
    if expected is None:  # pydantic's literal error, at the right place
        assert len(errors) == 1 and errors[0].startswith("resources.e."), errors
    else:
        assert errors == expected


def test_env_quickstart_with_entra() -> None:
    base = {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "AZURE_OPENAI_DEPLOYMENTS": "d"}
    config = config_from_env({**base, "AZURE_OPENAI_AUTH": "entra"})
    assert config is not None
    res = config.resources["azure"]
    assert (res.auth, res.keys) == ("entra", ())
    with pytest.raises(ConfigError) as info:
        config_from_env({**base, "AZURE_OPENAI_AUTH": "entra", "AZURE_OPENAI_API_KEY": "k"})
    assert info.value.errors == [
        "AZURE_OPENAI_AUTH=entra: unset AZURE_OPENAI_API_KEY (keys or Entra ID)"
    ]
    with pytest.raises(ConfigError) as info:
        config_from_env({**base, "AZURE_OPENAI_AUTH": "aad"})
    assert "AZURE_OPENAI_AUTH: must be 'entra' or 'keys', got 'aad'" in info.value.errors
