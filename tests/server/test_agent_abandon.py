"""An application that vanishes mid-command: the agent stops the command, and the device stays usable (issue 14).

End to end on loopback: the in-process platform, a real :class:`Agent` with a
local shell, and an application side driven frame by frame over a raw
WebSocket, so the test decides exactly how it vanishes: its connection is cut
without a close frame, or it stops reading while ``yes`` floods the tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import SSH_PASSWORD, SSH_USER
from tunnelnb.client.api import PlatformAPI
from tunnelnb.client.session import DeviceSession
from tunnelnb.protocol.frames import Frame, Op, decode_frame, encode_frame
from tunnelnb.server.agent import Agent
from tunnelnb.server.platform import Platform

GRACE = 2.0  # the agent's abandon_grace here (10 s by default)
HEARTBEAT = 1.0  # the agent's WebSocket pings: how a stalled platform connection is noticed
MARGIN = 2.5  # scheduling, the Ctrl-C pause, the hang-up of the shell's session


def _pids_running(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (the ``yes`` of this test only)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rfind(b")") + 2 :][:1] != b"Z":
            pids.append(int(name))
    return pids


@pytest.fixture
async def agent(platform: Platform) -> AsyncIterator[Agent]:
    secret = "secret-" + secrets.token_hex(4)
    platform.add_device("dev-1", secret)
    agent = Agent(
        platform.base_url,
        "dev-1",
        secret,
        local_shell=(SSH_USER, SSH_PASSWORD),
        heartbeat=HEARTBEAT,
        abandon_grace=GRACE,
        reconnect_step=0.2,
    )
    await agent.start()
    try:
        await agent.wait_online(10)
        yield agent
    finally:
        await agent.stop()


async def _start_flood(api: PlatformAPI, http: aiohttp.ClientSession, marker: str) -> aiohttp.ClientWebSocketResponse:
    """An application: open a tunnel, log in, start ``yes`` and read some of its output."""
    grant = await api.add_tunnel("dev-1")
    ws = await http.ws_connect(grant.tunnel_uri, headers={"tunnel_access_token": grant.token})

    async def until(op: Op) -> None:
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                if decode_frame(msg.data, max_bytes=None).op is op:
                    return

    await until(Op.CONNECT_TUNNEL)
    await ws.send_str(encode_frame(Frame.connect("c1", SSH_USER, SSH_PASSWORD)))
    await until(Op.CONNECT_RESPONSE)
    await ws.send_str(encode_frame(Frame.command("k1", f"yes {marker}\n")))
    received = 0
    async with asyncio.timeout(10):
        while received < 200_000:
            msg = await ws.receive()
            received += len(msg.data)
    assert _pids_running(marker), "yes is not running"
    return ws


@pytest.mark.parametrize("how", ["connection-cut", "stops-reading"])
async def test_an_abandoned_command_is_interrupted_and_the_device_serves_the_next_session(
    platform: Platform, api: PlatformAPI, agent: Agent, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunnelnb.server.agent")
    marker = "tunnelnb-abandoned-" + secrets.token_hex(4)
    http = aiohttp.ClientSession()
    try:
        ws = await _start_flood(api, http, marker)
        connection = ws._response.connection
        assert connection is not None and connection.transport is not None
        transport = connection.transport
        vanished = time.monotonic()
        if how == "connection-cut":
            transport.abort()  # no close frame: the platform sees the application drop
        else:
            transport.pause_reading()  # alive but reading nothing, answering no pings
        # The platform says "the application left" (a disconnect frame: no grace), or the device's
        # WebSocket stalls behind the application's and drops (then the grace runs).
        bound = GRACE + 2 * HEARTBEAT + MARGIN
        async with asyncio.timeout(bound + 10):
            while _pids_running(marker):  # noqa: ASYNC110 - polls the process table
                await asyncio.sleep(0.05)
        ran_on = time.monotonic() - vanished
        print(f"\n{how}: the command ran on for {ran_on:.2f} s after its application left (bound {bound:.1f} s)")
        assert ran_on < bound
        assert agent.online, "the device dropped off the platform"
        assert any("interrupting" in r.getMessage() for r in caplog.records)
        if how == "stops-reading":
            transport.abort()  # the stalled application finally goes away
    finally:
        await http.close()

    async with DeviceSession(api, "dev-1") as dev:  # the next application session works
        await dev.login(SSH_USER, SSH_PASSWORD)
        result = await dev.run("echo ok", timeout=20)
        assert (result.exit_code, result.stdout) == (0, "ok\n")
    assert agent.online
