"""Memory per refused WebSocket, over thousands of refusals (issue 14): too slow for the test suite.

Runs a platform in this process with the heartbeat `tunnelnb platform` uses (20 s),
opens a tunnel, and refuses N application sides for a malformed frame (close 1007),
printing the traced memory (tracemalloc) and the RSS before and after, per refused
connection.  Before the fix in tunnelnb/server/platform/sockets.py each one kept
about 11 KiB for 30 s; now the figure is the noise of a few bytes.

    .venv/bin/python bench/abuse.py [N]
"""

from __future__ import annotations

import asyncio
import gc
import resource
import sys
import tracemalloc

import aiohttp

from tunnelnb.protocol.devicelink import LINK_PATH, PASSWORD_HEADER, TIMESTAMP_HEADER, device_password, link_timestamp
from tunnelnb.server.platform import Platform

TOKEN = "bench-abuse-token-0000"


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def main(n: int) -> None:
    async with Platform(api_token=TOKEN, heartbeat=20.0) as platform, aiohttp.ClientSession() as http:
        platform.add_device("bench", "secret")
        stamp = link_timestamp()
        headers = {TIMESTAMP_HEADER: stamp, PASSWORD_HEADER: device_password("secret", stamp)}
        link = await http.ws_connect(platform.base_url + LINK_PATH.format(device_id="bench"), headers=headers)
        url = f"{platform.base_url}/v5/iot/{platform.project_id}/tunnels"
        async with http.post(url, json={"device_id": "bench"}, headers={"X-Auth-Token": TOKEN}) as r:
            tunnel = await r.json()

        async def refuse_one() -> None:
            ws = await http.ws_connect(
                tunnel["tunnel_uri"], headers={"tunnel_access_token": tunnel["tunnel_access_token"]}
            )
            await ws.send_str("{not json")
            while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
            assert ws.close_code == 1007, (msg, ws.close_code)

        for _ in range(100):
            await refuse_one()
        gc.collect()
        tracemalloc.start()
        traced0, rss0 = tracemalloc.get_traced_memory()[0], rss_kib()
        for _ in range(n):
            await refuse_one()
        await asyncio.sleep(0.5)
        gc.collect()
        traced1, rss1 = tracemalloc.get_traced_memory()[0], rss_kib()
        tracemalloc.stop()
        await link.close()
        print(f"refused {n} WebSockets (close 1007), heartbeat 20 s")
        print(
            f"traced memory: {traced0 / 1024:.0f} KiB -> {traced1 / 1024:.0f} KiB, {(traced1 - traced0) / n:.0f} B each"
        )
        print(f"RSS:           {rss0} KiB -> {rss1} KiB, {(rss1 - rss0) * 1024 / n:.0f} B each")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4500))
