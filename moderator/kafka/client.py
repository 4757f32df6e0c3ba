"""How every Kafka client here is configured: one place for the bootstrap servers, TLS and SASL,
so `serve`, the commands and the tools connect the same way."""

from __future__ import annotations

import ssl
from typing import Any

from moderator.errors import ConfigError
from moderator.settings import KafkaSettings

# Kafka's default message.max.bytes: the largest record batch a topic takes unless configured.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# The largest record our producers send, whatever a topic would take.
MAX_REQUEST_SIZE = 16 * 1024 * 1024


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
        "client_id": "moderator",
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        if not (settings.sasl_mechanism and settings.sasl_username and settings.sasl_password):
            raise ConfigError(
                "MODERATOR_KAFKA__SECURITY_PROTOCOL is SASL_*: set "
                "MODERATOR_KAFKA__SASL_MECHANISM, MODERATOR_KAFKA__SASL_USERNAME and "
                "MODERATOR_KAFKA__SASL_PASSWORD"
            )
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options
