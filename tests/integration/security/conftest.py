"""A secured broker and Redis of this session's own.

Kafka: `KAFKA_SECURITY=sasl_ssl scripts/services.sh up kafka` on free ports, which adds a
SASL_SSL listener (SCRAM-SHA-512 over TLS, certificate from a throwaway CA) next to the
PLAINTEXT one the readiness probe uses. Redis: a redis-server with the default user disabled,
one ACL user limited to moderator's keys, and a TLS port using the same CA's certificate.
Passwords are random per session, so a leak check can look for them verbatim.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from secure_services import REDIS_USER, SecureKafka, SecureRedis

from moderator.errors import ConfigError
from moderator.harness.ports import free_port_block
from moderator.harness.stack import Stack


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        free_port_block(3, 19500, 19900),
        free_port_block(1, 16500, 16900),
        tmp_path_factory.mktemp("secure-services"),
        security="sasl_ssl",
        sasl_password=secrets.token_urlsafe(18),
    )
    try:
        stack.run_script("up", "kafka")
    except ConfigError as exc:
        stack.down()
        pytest.fail(f"SASL_SSL broker did not start: {exc}", pytrace=False)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def secure_kafka(secure_stack: Stack) -> SecureKafka:
    assert secure_stack.sasl_password is not None
    return SecureKafka(
        bootstrap=secure_stack.secure_bootstrap,
        plaintext=secure_stack.bootstrap,
        password=secure_stack.sasl_password,
        ca=secure_stack.tls_dir / "ca.pem",
    )


@pytest.fixture(scope="session")
def secure_redis(
    secure_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureRedis]:
    directory = tmp_path_factory.mktemp("secure-redis")
    port = free_port_block(2, 16500, 16900)
    if port == secure_stack.redis_port:  # that one is reserved for the stack (never started)
        port = free_port_block(2, port + 2, 16900)
    password = secrets.token_urlsafe(18)
    tls = secure_stack.tls_dir
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"tls-port {port + 1}",
                f"tls-cert-file {tls / 'broker.pem'}",
                f"tls-key-file {tls / 'broker.key'}",
                f"tls-ca-cert-file {tls / 'ca.pem'}",
                "tls-auth-clients no",
                'save ""',
                "appendonly no",
                f"dir {directory}",
                # No anonymous access; one user that can only touch moderator's cache keys.
                "user default off",
                f"user {REDIS_USER} on >{password} ~moderator:* +@read +@write +@connection",
                "",
            ]
        )
    )
    conf.chmod(0o600)
    process = subprocess.Popen(
        ["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        # Wait for the port with a plain socket (closed on every try), then PING once as the
        # ACL user: retrying redis clients against a server still starting can leave a socket
        # to the garbage collector, which the warnings-as-errors setting reports in a later test.
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("secured redis-server did not start", pytrace=False)
                time.sleep(0.1)
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            client.ping()
        yield SecureRedis(port, port + 1, password, tls / "ca.pem")
    finally:
        process.terminate()
        process.wait(10)
