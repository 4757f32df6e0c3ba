"""The local image server, in this process and in one of its own: what it serves and how."""

from __future__ import annotations

from pathlib import Path

import httpx

from moderator.harness.imageserver import ImageServer, ImageServerProcess


def test_images_are_served_typed_by_their_names() -> None:
    with ImageServer() as server:
        server.images |= {"a.png": b"\x89PNG-ish", "b.jpg": b"\xff\xd8-ish", "c": b"?"}
        answers = {name: httpx.get(server.url(f"/img/{name}")) for name in server.images}
        missing = httpx.get(server.url("/img/nothing.png"))
    assert {n: r.content for n, r in answers.items()} == server.images
    types = {n: r.headers["content-type"] for n, r in answers.items()}
    assert types == {"a.png": "image/png", "b.jpg": "image/jpeg", "c": "image/jpeg"}
    assert missing.status_code == 404
    assert server.hits["img"] == 4


def test_a_server_process_serves_what_it_was_given(tmp_path: Path) -> None:
    server = ImageServerProcess({"0.png": b"zero", "1.jpg": b"one"}, tmp_path)
    try:
        got = {name: httpx.get(server.url(name)) for name in ("0.png", "1.jpg")}
    finally:
        server.stop()
    assert {n: r.content for n, r in got.items()} == {"0.png": b"zero", "1.jpg": b"one"}
    assert got["0.png"].headers["content-type"] == "image/png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.jpg"]
