"""The same cells and commands through Huawei Cloud's official SDK: AK/SK-signed, against `tunnelnb platform`.

The platform and a simulated fleet run as processes (`tunnelnb platform --ak-env/--sk-env`,
`tunnelnb sim`); `%tunnel connect huaweicloud` and `tunnelnb run --huaweicloud` reach them
through `huaweicloudsdkiotda` with the instance's endpoint, as a user would reach their
IoTDA instance.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.conftest import TUNNELNB, platform_and_sim_processes

pytest.importorskip("huaweicloudsdkiotda", reason="pip install 'tunnelnb[huaweicloud]' (in the test extra)")

AK, SK = "AKTEST" + secrets.token_hex(6).upper(), "sk-" + secrets.token_hex(16)
CLOUD_RUN = [TUNNELNB, "run", "--huaweicloud", "--region", "cn-north-4", "--endpoint"]
TOKEN, PASSWORD = "cloud-token-" + secrets.token_hex(6), "cloud-pass-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    access_key = ["--ak-env", "TNB_TEST_AK", "--sk-env", "TNB_TEST_SK"]
    keys = {"TNB_TEST_AK": AK, "TNB_TEST_SK": SK}
    with platform_and_sim_processes(TOKEN, PASSWORD, platform_args=access_key, platform_env=keys) as url:
        yield url


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TUNNELNB_URL", "TUNNELNB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", "demo")
    monkeypatch.setenv("TNB_TEST_PASSWORD", PASSWORD)


def test_a_tunnel_cell_runs_through_the_official_sdk(endpoint, sdk_env, capsys):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "tunnelnb")
    try:
        for line in (
            f"%tunnel connect huaweicloud --region cn-north-4 --endpoint {endpoint} --instance-id inst-1",
            "%tunnel login device-* --user ops --password-env TNB_TEST_PASSWORD",
        ):
            result = ip.run_cell(line)
            assert result.success, (line, result.error_in_exec)
        result = ip.run_cell("%%tunnel device-* --no-stream -o res\necho via-sdk $(hostname)")
        assert result.success, result.error_in_exec
        df = ip.user_ns["res"].df
        assert list(df.status) == ["ok"] * 3
        assert list(df.stdout) == [f"via-sdk device-0{i}\n" for i in range(1, 4)]
        fleet = ip.find_line_magic("tunnel").__self__.fleet
        assert type(fleet.api).__name__ == "HuaweiCloudAPI"
        printed = capsys.readouterr()
        assert "Huawei Cloud IoTDA" in printed.out and "access key ****" in printed.out
        for secret in (SK, PASSWORD, AK):
            assert secret not in printed.out + printed.err + df.to_csv()
    finally:
        ip.run_line_magic("unload_ext", "tunnelnb")


def test_tunnelnb_run_through_the_official_sdk(endpoint, sdk_env):
    env = {**os.environ, "TUNNELNB_LOGIN_PASSWORD": PASSWORD}
    done = subprocess.run(
        [*CLOUD_RUN, endpoint, "--format", "csv", "device-0[1-2]", "--", "uname -s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Linux") == 2
    assert SK not in done.stdout + done.stderr


def test_a_wrong_secret_key_is_one_clear_line(endpoint, sdk_env, monkeypatch):
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "not-the-secret")
    done = subprocess.run(
        [*CLOUD_RUN, endpoint, "device-01", "--", "true"],
        env={**os.environ, "TUNNELNB_LOGIN_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "APIGW.0301" in done.stderr or "IAM authentication" in done.stderr, done.stderr
