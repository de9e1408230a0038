"""The shared test helpers: the scripted server, eventually, peer lookup, the
chaos summary."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from postfleet.core.sockets import free_port
from postfleet.core.testing.chaos import ChaosResult
from postfleet.core.testing.load import LoadReport
from postfleet.core.testing.peers import peer_binary
from postfleet.core.testing.scripted import scripted_server
from postfleet.core.testing.waiting import eventually


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hello\r\n")
    await writer.drain()
    writer.write(b"250 " + (await reader.readline()))
    await writer.drain()


async def test_scripted_server_runs_the_script_per_connection() -> None:
    async with scripted_server(_greet) as server:
        for word in (b"one", b"two"):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            assert await reader.readline() == b"220 hello\r\n"
            writer.write(word + b"\r\n")
            assert await reader.readline() == b"250 " + word + b"\r\n"
            assert await reader.read() == b""  # closed once the script returns
            writer.close()


async def test_a_client_hanging_up_is_no_failure() -> None:
    async with scripted_server(_greet) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        await reader.readline()
        writer.close()  # the script's readline() sees the end of the stream
        await writer.wait_closed()


async def test_a_failing_script_fails_the_test() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("the script's own check")

    with pytest.raises(AssertionError, match="the script's own check"):
        async with scripted_server(broken) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            await eventually(reader.at_eof, 5, "the script to end")
            writer.close()


async def test_scripts_still_running_are_cancelled() -> None:
    started = asyncio.Event()

    async def forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await asyncio.Event().wait()

    async with scripted_server(forever) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        await asyncio.wait_for(started.wait(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_eventually_returns_the_first_truthy_value() -> None:
    values = iter([0, None, 7])

    async def probe() -> int | None:
        return next(values)

    assert await eventually(probe, 5) == 7
    with pytest.raises(AssertionError, match="waiting for nothing: last False"):
        await eventually(lambda: False, 0.1, "nothing")


def test_a_missing_peer_names_its_package() -> None:
    with pytest.raises(RuntimeError, match=r"make peers.*Debian package no-such-pkg"):
        peer_binary("postfleet-no-such-program", "no-such-pkg")


def test_free_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    """A port picked for a server to bind a moment later cannot be taken
    meanwhile as the source port of an outgoing connection."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_chaos_summary_names_the_kill_before_each_duplicate() -> None:
    report = LoadReport(started=100.0, finished=110.0)
    report.accepted = {"m1": "Q1", "m2": "Q2"}
    report.accepted_at = {"m1": 101.0, "m2": 104.5}
    result = ChaosResult(report, kills=["qmgr", "cleanup"], drain_s=1.0,
                         arrived=["m1", "m2", "m2"], kill_times=[102.0, 104.0])
    summary = result.summary(2)
    assert "duplicated:         1 " in summary
    assert "m2: 2 copies, accepted at 4.50 s; cleanup killed 0.50 s before" in summary
    assert "m1:" not in summary
