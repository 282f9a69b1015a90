"""Server settings: checked where they are made, one copy of each default, and
error texts that quote the limit the server was given."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from nbchat.cli.main import main, serve_parser, settings_from
from nbchat.clients import connect
from nbchat.server.app import create_app
from nbchat.server.config import Settings
from nbchat.server.limits import Limits
from nbchat.wire.errors import PayloadTooLarge
from tests.helpers import TOKEN, ServerFactory

BAD_VALUES = [
    ("max_body_bytes", -1), ("max_body_bytes", 0), ("max_connections", 0), ("header_timeout", math.nan),
    ("max_header_bytes", "64k"), ("max_queued_bytes", True), ("model_timeout", 0), ("keepalive_seconds", -1.0),
    ("ping_interval", 0), ("replay_max_bytes", 0), ("max_turns", 0), ("pending_seconds", 0),
    ("stream_max_entries", 0), ("lease_seconds", -3), ("rate", -1), ("grace_period", -0.5),
    ("retain_seconds", math.nan), ("replay_rate", -2.0), ("port", 70000), ("port", -1), ("port", 80.5),
    ("backend", "gpt"), ("store", "localhost:6379"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Settings\.{name}\b"):
        Settings(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES[:4])
def test_every_way_of_making_a_server_checks(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Settings\.{name}\b"):
        create_app(dataclasses.replace(Settings(backend="echo"), **{name: value}))


def test_replay_goes_with_the_replay_backend_only() -> None:
    with pytest.raises(ValueError, match=r"Settings\.replay\b"):
        Settings(backend="replay")
    with pytest.raises(ValueError, match=r"Settings\.replay\b"):
        Settings(backend="echo", replay="turns/a.jsonl")
    assert Settings(backend="replay", replay="turns/a.jsonl").replay == "turns/a.jsonl"


def test_zero_is_allowed_where_it_means_something() -> None:
    settings = Settings(port=0, rate=0, grace_period=0, retain_seconds=0, replay_rate=0)
    assert (settings.port, settings.rate, settings.grace_period) == (0, 0, 0)


def parse_serve(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    made, default = settings_from(parse_serve()), Settings()
    differ = {f.name for f in dataclasses.fields(Settings) if getattr(made, f.name) != getattr(default, f.name)}
    assert differ == {"token"}  # made concrete at start; every other value is Settings' own


def test_the_connection_limits_default_to_the_settings() -> None:
    assert Limits() == Limits.of(Settings())
    limits = Limits.of(Settings(max_connections=7, header_timeout=2.5), max_connections=5)
    assert (limits.max_connections, limits.header_timeout) == (5, 2.5)


@pytest.mark.parametrize(("argv", "says"), [
    (["--max-body-bytes", "0"], "--max-body-bytes must be a number > 0"),
    (["--rate", "-1"], "--rate must be a number >= 0"),
    (["--port", "70000"], "--port must be an int from 0 to 65535"),
    (["--store", "localhost"], "--store takes a Redis URL"),
    (["--backend", "replay"], "--replay FILE"),
])
def test_the_command_line_refuses_in_the_options_name(argv: list[str], says: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbchat serve: ") and says in err and "Settings." not in err


@pytest.mark.parametrize("transport", ["ws", "sse", "ndjson", "openai"])
def test_a_too_large_request_quotes_the_configured_limit(make_server: ServerFactory, transport: str) -> None:
    server = make_server(max_body_bytes=2000)
    with connect(server.url, token=TOKEN, transport=transport) as client, pytest.raises(PayloadTooLarge) as info:
        list(client.stream("x" * 2500))  # over the limit, under the WebSocket frame slack: the app refuses it
    assert "2000" in str(info.value) and "MiB" not in str(info.value)
    with connect(server.url, token=TOKEN, transport=transport) as client:
        assert "".join(c.content for c in client.stream("fits") if hasattr(c, "content")) == "fits"
