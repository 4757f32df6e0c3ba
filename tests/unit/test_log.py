import json
import logging

import pytest
from pydantic import SecretStr

from moderator.log import configure, get, redact


def test_redact_masks_url_credentials() -> None:
    assert redact("redis://:hunter2@cache:6379/0") == "redis://***:***@cache:6379/0"
    assert redact("https://bob:pw@img.test/a.jpg ok") == "https://***:***@img.test/a.jpg ok"
    assert redact("https://img.test/a.jpg") == "https://img.test/a.jpg"


def test_json_logs_never_carry_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO", as_json=True)
    try:
        get("test").info(
            "connecting to redis://user:hunter2@cache:6379",
            extra={"fields": {"password": SecretStr("hunter2"), "url": "kafka://a:hunter2@b"}},
        )
    finally:
        logging.getLogger("moderator").handlers.clear()
    line = capsys.readouterr().err.strip()
    assert "hunter2" not in line
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["password"] == "***"


def test_aiokafka_lines_come_out_formatted_and_its_info_chatter_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("INFO")
    try:
        logging.getLogger("aiokafka.consumer.group_coordinator").info("joined group")
        logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch offsets")
        get("test").info("ours")
    finally:
        for name in ("moderator", "aiokafka"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert " ERROR   aiokafka.consumer.fetcher: Failed fetch offsets" in lines[0]
    assert " INFO    moderator.test: ours" in lines[1]
