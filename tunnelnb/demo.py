"""``tunnelnb demo``: a platform, a device and a few commands, all in this process.

Everything real and on loopback: the local platform, the device agent, an
embedded SSH server with ``/bin/sh`` on a PTY, and the client running commands
through the tunnel.  Needs nothing but the installed package.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile

from .agent import Agent
from .api import PlatformAPI
from .client import DeviceSession
from .platform import Platform
from .sshserver import ShellServer

COMMANDS = [
    "uname -a",
    "echo \"hello from $(hostname) — $(date -u +%Y-%m-%dT%H:%M:%SZ)\"",
    "cd /tmp && pwd",
    "pwd  # the shell persists between commands",
    "ls /nonexistent",
    "(exit 3)",
]


async def run_demo() -> int:
    user, password = "ops", secrets.token_urlsafe(12)
    secret = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="tunnelnb-demo-") as home:
        async with (
            Platform() as platform,
            ShellServer(users={user: password}, cwd=home) as sshd,
        ):
            print(f"local platform: {platform.base_url} (project {platform.project_id})")
            platform.add_device("device-01", secret, fw_version="2.1", tags={"site": "lab"})
            async with Agent(platform.base_url, "device-01", secret, ssh_port=sshd.port) as agent:
                await agent.wait_online(10)
                print(f"device-01 online; its agent bridges tunnels to the SSH server on 127.0.0.1:{sshd.port}\n")
                async with (
                    PlatformAPI(platform.base_url, project_id=platform.project_id, api_token=platform.api_token) as api,
                    DeviceSession(api, "device-01", delete_tunnel=True) as device,
                ):
                    await device.login(user, password)
                    for command in COMMANDS:
                        r = await device.run(command, timeout=10)
                        print(f"$ {command}")
                        if r.stdout:
                            print(r.stdout, end="" if r.stdout.endswith("\n") else "\n")
                        print(f"  → {r.status}, exit code {r.exit_code}, {r.duration_s * 1000:.0f} ms\n")
    print("demo finished: platform, agent and SSH server stopped cleanly")
    return 0


def main() -> int:
    return asyncio.run(run_demo())
