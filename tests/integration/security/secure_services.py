"""What the secured-services fixtures hand to tests (conftest.py starts them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moderator.settings import KafkaSettings

SASL_USER = "moderator"
REDIS_USER = "moderator"


@dataclass(frozen=True)
class SecureKafka:
    bootstrap: str  # the SASL_SSL listener
    plaintext: str  # the same broker's PLAINTEXT listener
    password: str
    ca: Path

    def settings(self, **overrides: object) -> KafkaSettings:
        values: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": SASL_USER,
            "sasl_password": self.password,
            "ssl_cafile": self.ca,
        }
        return KafkaSettings.model_validate(values | overrides)


@dataclass(frozen=True)
class SecureRedis:
    port: int  # plain TCP, ACL user required
    tls_port: int
    password: str
    ca: Path

    def url(self, password: str | None = None, *, tls: bool = True) -> str:
        secret = self.password if password is None else password
        if tls:
            return (
                f"rediss://{REDIS_USER}:{secret}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca}"
            )
        return f"redis://{REDIS_USER}:{secret}@127.0.0.1:{self.port}/0"
