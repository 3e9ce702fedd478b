"""The clip worker under hostile local clients: a silent connection delays nobody.

An in-process server with a stand-in scorer (no model); the silent client is a raw TCP socket
that connects and never sends a byte, which held the old single-threaded accept forever.
"""

from __future__ import annotations

import socket
import time

from engine.ops.clip_worker import server as cw_server
from tests.test_clip_worker import serve_in_thread


def test_a_silent_connection_does_not_delay_the_owners_ping(tmp_path):
    thread, client = serve_in_thread(tmp_path, idle_timeout_s=60)
    silent = [socket.create_connection(client.address) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them before the owner connects
        started = time.monotonic()
        assert client.ping(timeout_s=10)["ok"]
        assert time.monotonic() - started < 2.0
        assert client.request({"op": "shutdown"})["ok"]
        thread.join(timeout=5)
        assert not thread.is_alive(), "shutdown waited for the silent clients"
    finally:
        for sock in silent:
            sock.close()


def test_idle_exit_fires_while_a_silent_connection_is_open(tmp_path):
    thread, client = serve_in_thread(tmp_path, idle_timeout_s=1.0)
    silent = socket.create_connection(client.address)
    try:
        thread.join(timeout=6)
        assert not thread.is_alive(), "the idle exit was held up by a silent connection"
        assert not client.info_file.exists()
    finally:
        silent.close()


def test_a_silent_connection_is_dropped_after_the_handshake_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(cw_server, "AUTH_TIMEOUT_S", 0.5)
    thread, client = serve_in_thread(tmp_path, idle_timeout_s=60)
    silent = socket.create_connection(client.address)
    try:
        silent.settimeout(5)
        received = b""
        while chunk := silent.recv(4096):  # the challenge, then end of stream once the server gives up
            received += chunk
        assert received, "the server never sent its challenge"
        assert client.ping()["ok"]
    finally:
        silent.close()
        client.request({"op": "shutdown"})
        thread.join(timeout=5)
