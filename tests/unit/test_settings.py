import re
from pathlib import Path

import pytest

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
