"""bench/stages.py: a trivial command's stages timed through the real stack, and the wrappers removed after."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

from tunnelnb.client.session import DeviceSession
from tunnelnb.client.transport import TunnelSocket
from tunnelnb.server.agent.shells import Inbox, SSHBackend

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


relay = _load("relay")
stages = relay.stages


async def test_every_stage_is_timed_and_the_wrappers_come_off() -> None:
    originals = (TunnelSocket.send, DeviceSession._on_output, SSHBackend.write, Inbox.feed)
    async with relay.Tunnelnb("none") as tnb:
        result = await stages.measure(tnb, samples=5, warmup=2)
        assert "_route" not in vars(tnb.platform)
        assert (await tnb.dev.run("echo after", timeout=10)).stdout == "after\n"
    assert (TunnelSocket.send, DeviceSession._on_output, SSHBackend.write, Inbox.feed) == originals
    assert list(result) == [label for label, _ in stages.STAGES] + ["total"]
    assert all(math.isfinite(v) and v >= 0 for v in result.values()), result
    assert sum(v for k, v in result.items() if k != "total") > 0
    table = stages.markdown(result, floor_us=70.0, ssh_us=430.0)
    assert "| SSH server + PTY + shell + SSH client |" in table
    assert "leaves 75 µs above floor + SSH" in table
    assert "| → platform | " in table and "| a floor hop |" in table
