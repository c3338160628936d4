"""Files in and out of many devices (:mod:`tunnelnb.fleet.files`) against the simulated fleet.

Four simulated devices: two healthy, one whose ``/data`` is full (a real filesystem
of its own, ``ENOSPC``), one offline; each shell in its sandbox, behind a real agent
and SSH server, on loopback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import API_TOKEN
from tunnelnb.client.api import PlatformAPI
from tunnelnb.errors import TunnelnbError
from tunnelnb.fleet import files
from tunnelnb.fleet.fleet import Fleet
from tunnelnb.fleet.transfers import TRANSFER_COLUMNS, byte_count
from tunnelnb.server.platform import Platform
from tunnelnb.sim import SimulatedFleet
from tunnelnb.sim.profiles import make_profiles

HEALTHY, FULL, OFFLINE = ["dev-01", "dev-02"], "dev-03", "dev-04"


@pytest.fixture
async def sim(platform: Platform) -> AsyncIterator[SimulatedFleet]:
    profiles = make_profiles(4, seed=5, prefix="dev-", misbehaving=0.0)
    profiles[2] = dataclasses.replace(profiles[2], misbehaviour="disk_full", disk_used_pct=100)
    profiles[3] = dataclasses.replace(profiles[3], misbehaviour="offline")
    fleet = SimulatedFleet(platform.base_url, api_token=API_TOKEN, devices=profiles)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def statuses(res: files.TransferResults) -> dict[str, str]:
    return {row.device_id: row.status for row in res}


async def test_get_fans_out_and_never_overwrites(api: PlatformAPI, sim: SimulatedFleet, tmp_path: Path) -> None:
    progress: dict[str, tuple[int, int]] = {}
    async with Fleet(api, login=sim.login()) as fleet:
        res = await files.get(
            fleet,
            "/etc/device.conf",
            "dev-*",
            tmp_path,
            on_progress=lambda d, done, total: progress.__setitem__(d, (done, total)),
        )
        assert statuses(res) == {"dev-01": "ok", "dev-02": "ok", "dev-03": "ok", "dev-04": "offline"}
        for device_id in [*HEALTHY, FULL]:
            local = tmp_path / device_id / "device.conf"
            data = local.read_bytes()
            assert f"device_id={device_id}\n".encode() in data
            row = res[device_id]
            assert (row.path, row.bytes, row.sha256, row.error) == (
                str(local),
                len(data),
                hashlib.sha256(data).hexdigest(),
                "",
            )
            assert progress[device_id] == (len(data), len(data))
        offline = res[OFFLINE]
        assert (offline.path, offline.bytes, offline.sha256) == (str(tmp_path / OFFLINE / "device.conf"), None, "")
        assert not (tmp_path / OFFLINE).exists()
        assert sorted(p.name for p in (tmp_path / "dev-01").iterdir()) == ["device.conf"]  # no temporary file left

        # Again: the files are there, so those devices are not even contacted.
        before = (tmp_path / "dev-01" / "device.conf").read_bytes()
        (tmp_path / "dev-01" / "device.conf").write_bytes(b"edited locally")
        res = await fleet.get("/etc/device.conf", "dev-*", tmp_path)
        assert statuses(res) == {"dev-01": "error", "dev-02": "error", "dev-03": "error", "dev-04": "offline"}
        assert res["dev-01"].error == (
            f"{tmp_path / 'dev-01' / 'device.conf'} exists: pass overwrite=True (--force) to replace it"
        )
        assert (tmp_path / "dev-01" / "device.conf").read_bytes() == b"edited locally"
        res = await fleet.get("/etc/device.conf", "dev-01", tmp_path, overwrite=True)
        assert statuses(res) == {"dev-01": "ok"}
        assert (tmp_path / "dev-01" / "device.conf").read_bytes() == before

        # A relative path keeps its directories; a file that is not there is that device's error.
        res = await files.get(fleet, "/no/such/file", HEALTHY, tmp_path)
        assert [(r.status, r.error) for r in res] == [("error", "/no/such/file: no such file on the device")] * 2
        history = fleet.history
        assert list(history.command.unique()) == ["get /etc/device.conf", "get /no/such/file"]


async def test_put_fans_out_and_a_full_disk_is_a_row(api: PlatformAPI, sim: SimulatedFleet, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(200_000)
    local = tmp_path / "app.bin"
    local.write_bytes(data)
    local.chmod(0o750)
    digest = hashlib.sha256(data).hexdigest()
    async with Fleet(api, login=sim.login()) as fleet:
        res = await fleet.put(local, "/data/", "dev-*", keep_mode=True)
        assert statuses(res) == {"dev-01": "ok", "dev-02": "ok", "dev-03": "error", "dev-04": "offline"}
        for device_id in HEALTHY:
            row = res[device_id]
            assert (row.path, row.bytes, row.sha256, row.error) == ("/data/app.bin", 200_000, digest, "")
        check = await fleet.run("sha256sum /data/app.bin; stat -c %a /data/app.bin", HEALTHY)
        assert [r.stdout for r in check] == [f"{digest}  /data/app.bin\n750\n"] * 2
        # The full device: nothing was sent, nothing is left, and the row says why with the device's numbers.
        free = await fleet.run("df -kP /data | tail -n 1; ls -A /data | grep -c tnb-", FULL)
        available = int(free[FULL].stdout.split("\n")[0].split()[3]) * 1024
        assert free[FULL].stdout.split("\n")[1] == "0"
        assert res[FULL].error == (
            f"no space left on device at /data/app.bin (200000 bytes needed, {available} available); "
            "nothing was written there"
        )
        assert (res[FULL].bytes, res[FULL].sha256) == (None, "")
        assert res[OFFLINE].path == "/data/app.bin"

        df = res.df
        assert list(df.columns) == list(TRANSFER_COLUMNS)
        assert df.bytes.dtype == pd.Int64Dtype()
        assert list(df.device_id) == ["dev-01", "dev-02", "dev-03", "dev-04"]
        html = res._repr_html_()
        assert "dev-03" in html and "no space left on device" in html
        assert res.header() == f"put /data/app.bin · 4 devices: 2 ok, 1 error, 1 offline · {byte_count(400_000)}"
        assert list(fleet.history.command.unique()) == [
            "put /data/app.bin",
            "sha256sum /data/app.bin; stat -c %a /data/app.bin",
            "df -kP /data | tail -n 1; ls -A /data | grep -c tnb-",
        ]

        with pytest.raises(TunnelnbError) as info:
            await files.put(fleet, tmp_path / "missing.bin", "/data/x", "dev-*")
        assert str(info.value) == f"cannot read {tmp_path / 'missing.bin'}: No such file or directory"


def test_where_a_get_puts_a_file() -> None:
    assert str(files.local_name("/var/log/app.log")) == "app.log"
    assert str(files.local_name("logs/app.log")) == "logs/app.log"
    assert str(files.local_name("./logs/app.log")) == "logs/app.log"
    assert str(files.local_name("~/logs/app.log")) == "logs/app.log"
    assert str(files.local_name("../secret")) == "secret"
    with pytest.raises(TunnelnbError, match="names a directory"):
        files.local_name("/var/log/")
    assert files.remote_destination("/tmp/x.conf", "/etc/app/") == "/etc/app/x.conf"
    assert files.remote_destination("/tmp/x.conf", "/etc/app/y.conf") == "/etc/app/y.conf"
    assert byte_count(812) == "812 B" and byte_count(10_500_000) == "10.5 MB" and byte_count(None) == ""
