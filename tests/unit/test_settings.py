import json
import logging
import re
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.errors import ConfigError
from moderator.settings import load_settings, settings_markdown, unknown_env_vars

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_environment() -> None:
    s = load_settings({})
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.input_topic == "moderation.images"
    assert s.model.path == "demo"


def test_environment_overrides_nested_groups() -> None:
    s = load_settings(
        {
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "MODERATOR_KAFKA__GROUP_ID": "g",
            "MODERATOR_PIPELINE__MAX_BATCH": "128",
            "MODERATOR_MODEL__PROVIDERS": '["cpu"]',
            "MODERATOR_REDIS__URL": "redis://:hunter2@cache:6379/1",
        }
    )
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.kafka.group_id == "g"
    assert s.pipeline.max_batch == 128
    assert s.model.providers == ["cpu"]
    assert "hunter2" not in repr(s)
    assert "hunter2" not in s.model_dump_json()


def test_yaml_file_is_overridden_by_environment(tmp_path: Path) -> None:
    config = tmp_path / "moderator.yaml"
    config.write_text("kafka:\n  group_id: from-file\n  input_topic: file-topic\n")
    s = load_settings({"MODERATOR_KAFKA__GROUP_ID": "from-env", "MODERATOR_CONFIG": str(config)})
    assert s.kafka.group_id == "from-env"
    assert s.kafka.input_topic == "file-topic"


def test_validation_error_names_the_variable_and_the_expected_form() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"MODERATOR_PIPELINE__MAX_BATCH": "lots"})
    message = str(info.value)
    assert "MODERATOR_PIPELINE__MAX_BATCH" in message
    assert "integer" in message


def test_bad_config_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings({}, config)


def test_unknown_variables_are_reported() -> None:
    env = {"MODERATOR_KAFKA__GROUPID": "x", "MODERATOR_KAFKA__GROUP_ID": "y", "PATH": "/bin"}
    assert unknown_env_vars(env) == ["MODERATOR_KAFKA__GROUPID"]


def test_readme_settings_table_is_generated_from_the_model() -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert found, "README.md lacks the settings table markers"
    assert found.group(1).strip() == settings_markdown().strip(), (
        "README settings table is stale: run `moderator settings --markdown` and paste it"
    )


# --- secrets never appear in settings errors ----------------------------------------------------

SECRET = "Zq8-hunter2-s3cr3t"


def _failure(
    env: dict[str, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    """The ConfigError's message, and everything else the failure left: chain, logs, output."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    captured = capsys.readouterr()
    chain = "".join(traceback.format_exception(info.value))  # causes included
    return str(info.value), chain + caplog.text + captured.out + captured.err


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MODERATOR_REDIS__URL": f"redis://:{SECRET}@cache:notaport/0"}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_REDIS__URL": f"redis://:{SECRET}@cache:99999/0"}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_REDIS__URL": f"redis://:{SECRET}@cache:0/0"}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_REDIS__URL": f"http://user:{SECRET}@cache/0"}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_REDIS__URL": f"redis://:{SECRET}@cache/db-one"}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_REDIS__URL": SECRET}, "MODERATOR_REDIS__URL"),
        ({"MODERATOR_HTTP__PORT": f"redis://u:{SECRET}@cache/0"}, "MODERATOR_HTTP__PORT"),
        (
            {"MODERATOR_KAFKA": f'{{"sasl_password": "{SECRET}", "topic_partitions": "x"}}'},
            "MODERATOR_KAFKA__TOPIC_PARTITIONS",
        ),
        ({"MODERATOR_KAFKA": f'{{"sasl_password": "{SECRET}", '}, "KafkaSettings"),
        (
            {"MODERATOR_KAFKA__SASL_PASSWORD": SECRET, "MODERATOR_KAFKA__TOPIC_PARTITIONS": "0"},
            "MODERATOR_KAFKA__TOPIC_PARTITIONS",
        ),
    ],
)
def test_secrets_from_the_environment_never_appear(
    env: dict[str, str],
    variable: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message, everything = _failure(env, caplog, capsys)
    assert variable in message or "kafka" in message
    assert SECRET not in message
    assert SECRET not in everything


@pytest.mark.parametrize(
    ("yaml_text", "variable"),
    [
        (f"kafka:\n  sasl_password: [{SECRET}]\n", "MODERATOR_KAFKA__SASL_PASSWORD"),
        (f"kafka:\n  sasl_password: {{v: {SECRET}}}\n", "MODERATOR_KAFKA__SASL_PASSWORD"),
        ("kafka:\n  sasl_password: 86753091234567\n", "MODERATOR_KAFKA__SASL_PASSWORD"),
        (f"redis:\n  url: [{SECRET}]\n", "MODERATOR_REDIS__URL"),
        (f"redis:\n  url: 'redis://:{SECRET}@cache:x/0'\n", "MODERATOR_REDIS__URL"),
        (f"cache:\n  url: 'redis://:{SECRET}@cache/0'\n", "MODERATOR_CACHE"),  # unknown group
        (f'kafka:\n  sasl_password: "{SECRET}\n  group_id: g\n', "line 2, column 18"),
        (f"kafka:\n  sasl_password: {SECRET}: x\n", "line 2"),
    ],
)
def test_secrets_from_the_config_file_never_appear(
    tmp_path: Path,
    yaml_text: str,
    variable: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "moderator.yaml"
    config.write_text(yaml_text)
    message, everything = _failure({"MODERATOR_CONFIG": str(config)}, caplog, capsys)
    secret = "86753091234567" if "8675309" in yaml_text else SECRET
    assert variable in message
    assert secret not in message
    assert secret not in everything


def test_percent_encoded_passwords_are_masked_both_ways(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MODERATOR_HTTP__PORT": "redis://u:p%40ss-Zq8secret@cache/0"}
    message, everything = _failure(env, caplog, capsys)
    assert "MODERATOR_HTTP__PORT" in message
    for text in ("p%40ss-Zq8secret", "p@ss-Zq8secret"):
        assert text not in everything


def test_redis_urls_redis_py_accepts_still_load() -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache.example:6380/2",
        "REDIS://cache",
        "redis://user:p%40ss@cache:6379/0?socket_timeout=1",
        "unix:///run/redis.sock?db=1",
    ):
        assert load_settings({"MODERATOR_REDIS__URL": url}).redis.url.get_secret_value() == url


def test_start_up_through_the_cli_hides_the_secret() -> None:
    from typer.testing import CliRunner

    from moderator.cli import app

    env = {"MODERATOR_REDIS__URL": f"redis://:{SECRET}@cache:notaport/0"}
    for command in (["settings"], ["serve"]):
        result = CliRunner().invoke(app, command, env=env)
        assert result.exit_code == 2
        assert "MODERATOR_REDIS__URL" in result.output
        assert SECRET not in result.output
        assert SECRET not in repr(result.exception)


_SECRET_TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="*"), min_size=6, max_size=40
)


@given(secret=_SECRET_TEXT, form=st.integers(0, 3))
def test_no_secret_text_survives_into_the_message(secret: str, form: int) -> None:
    env = [
        {"MODERATOR_REDIS__URL": secret},  # no scheme: refused
        {"MODERATOR_REDIS__URL": f"redis://:{quote(secret, safe='')}@cache:bad/0"},
        {"MODERATOR_KAFKA": json.dumps({"sasl_password": [secret]})},
        {"MODERATOR_KAFKA__SASL_PASSWORD": secret, "MODERATOR_KAFKA__TOPIC_PARTITIONS": "0"},
    ][form]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert secret not in str(info.value)
    assert quote(secret, safe="") not in str(info.value)


def test_the_memory_budget_holds_at_least_two_images() -> None:
    with pytest.raises(ConfigError, match=r"memory_budget_bytes .* at least twice max_image_bytes"):
        load_settings(environ={"MODERATOR_PIPELINE__MEMORY_BUDGET_BYTES": str(10 * 2**20)})
    fits = {
        "MODERATOR_PIPELINE__MEMORY_BUDGET_BYTES": str(8 * 2**20),
        "MODERATOR_PIPELINE__MAX_IMAGE_BYTES": str(4 * 2**20),
    }
    assert load_settings(environ=fits).pipeline.memory_budget_bytes == 8 * 2**20
