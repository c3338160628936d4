"""ShellServer and PtyProcess against real parts: asyncssh client, /bin/sh on real PTYs, loopback."""

from __future__ import annotations

import asyncio
import re
import time

import asyncssh
import pytest

from tunnelnb.server.sshserver import PtyProcess, ShellServer

USERS = {"ops": "s3cret", "root": "toor"}


def _gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting for an init that does not reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls process and socket state
            await asyncio.sleep(0.02)


async def _read_until(proc: asyncssh.SSHClientProcess, needle: bytes, timeout: float = 5.0) -> bytes:
    """Terminal output up to and including ``needle``.

    Type needles with quotes inside (``echo do''ne``), so the echo of the typed line never matches.
    """
    out = b""
    async with asyncio.timeout(timeout):
        while needle not in out:
            data = await proc.stdout.read(65536)
            if not data:
                break
            out += data
    assert needle in out, out
    return out


@pytest.fixture
async def server():
    async with ShellServer(users=USERS) as srv:
        yield srv


def _connect(srv: ShellServer, username: str = "ops", password: str = "s3cret"):
    return asyncssh.connect(
        srv.host, srv.port, username=username, password=password, known_hosts=None, client_keys=None, config=None
    )


async def _pty_shell(conn: asyncssh.SSHClientConnection, size: tuple[int, int] = (100, 40)):
    proc = await conn.create_process(term_type="xterm", term_size=size, encoding=None)
    proc.stdin.write(b"stty -echo; PS1=''\n")
    return proc


async def test_login_ok_and_refused(server: ShellServer) -> None:
    assert server.port > 0
    async with _connect(server) as conn:
        result = await conn.run("echo hello", check=True)
        assert result.stdout == "hello\n"
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(server, password="wrong"):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(server, username="nobody", password="s3cret"):
            pass


async def test_pty_shell_has_a_tty_of_the_requested_size(server: ShellServer) -> None:
    async with _connect(server) as conn:
        proc = await _pty_shell(conn)
        proc.stdin.write(b"tty; stty size; echo TERM=$TERM; echo do''ne\n")
        out = await _read_until(proc, b"done")
        assert b"/dev/pts/" in out
        assert b"40 100\r\n" in out  # rows cols; \r\n: the terminal's onlcr
        assert b"TERM=xterm" in out
        proc.change_terminal_size(120, 50)
        proc.stdin.write(b"stty size; echo do''ne2\n")
        out = await _read_until(proc, b"done2")
        assert b"50 120" in out
        proc.close()


async def test_ctrl_c_interrupts_the_foreground_job_and_the_shell_survives(server: ShellServer) -> None:
    async with _connect(server) as conn:
        proc = await _pty_shell(conn)
        proc.stdin.write(b"echo sta''rted; sleep 30; echo after''-sleep $?\n")
        await _read_until(proc, b"started")
        await asyncio.sleep(0.2)  # let sleep become the foreground job
        t0 = time.monotonic()
        proc.stdin.write(b"\x03")
        proc.stdin.write(b"echo ali''ve\n")
        out = await _read_until(proc, b"alive")
        assert time.monotonic() - t0 < 5
        assert b"after-sleep" not in out  # ^C ends the whole command line, as in sh
        proc.close()


async def test_shell_exit_status_ends_the_channel(server: ShellServer) -> None:
    async with _connect(server) as conn:
        proc = await _pty_shell(conn)
        proc.stdin.write(b"exit 3\n")
        async with asyncio.timeout(5):
            await proc.wait_closed()
        assert proc.returncode == 3

        result = await conn.run("echo out; echo err >&2; exit 4")  # exec on pipes, no PTY
        assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 4)

        result = await conn.run("kill -TERM $$")
        assert result.exit_signal is not None and result.exit_signal[0] == "TERM"


async def test_stop_leaves_no_child_processes() -> None:
    srv = ShellServer(users=USERS)
    await srv.start()
    conn = await _connect(srv)
    proc = await _pty_shell(conn)
    proc.stdin.write(b"sleep 30 & echo bg=$! sh=$$; echo o''k\n")
    out = (await _read_until(proc, b"ok")).decode()
    bg = int(out.split("bg=")[-1].split()[0])
    sh = int(out.split("sh=")[-1].split()[0])
    proc.stdin.write(b"sleep 30\n")  # a foreground job too
    await asyncio.sleep(0.1)
    assert not _gone(bg) and not _gone(sh)
    await srv.stop()
    await _until(lambda: _gone(bg) and _gone(sh), timeout=3)
    conn.close()
    await conn.wait_closed()


async def test_closing_the_channel_ends_the_shell_session(server: ShellServer) -> None:
    async with _connect(server) as conn:
        proc = await _pty_shell(conn)
        proc.stdin.write(b"sleep 30 & echo bg=$! sh=$$; echo o''k\n")
        out = (await _read_until(proc, b"ok")).decode()
        pids = [int(out.split(k)[-1].split()[0]) for k in ("bg=", "sh=")]
    await _until(lambda: all(_gone(p) for p in pids), timeout=3)


async def test_many_concurrent_sessions(server: ShellServer) -> None:
    async def one(i: int) -> str:
        async with _connect(server) as conn:
            proc = await _pty_shell(conn, (80, 24))
            proc.stdin.write(f"echo n=$(({i} * 2)); exit\n".encode())
            out = b""
            async with asyncio.timeout(10):
                while data := await proc.stdout.read(65536):
                    out += data
            return out.decode()

    outs = await asyncio.gather(*(one(i) for i in range(20)))
    for i, out in enumerate(outs):
        assert f"n={i * 2}" in out


async def test_pty_process_read_write_resize_and_exit_code() -> None:
    proc = PtyProcess(["/bin/sh"], cols=50, rows=10)
    proc.write(b"stty -echo; stty size; printf 'caf\\303\\251\\n'; exit 5\n")
    out = b""
    async with asyncio.timeout(5):
        while data := await proc.read():
            out += data
        assert await proc.wait() == 5
    assert b"10 50" in out
    assert "café".encode() in out
    assert proc.returncode == 5


async def test_pty_process_terminate_kills_its_session() -> None:
    chunks: list[bytes] = []
    proc = PtyProcess(["/bin/sh"], on_data=chunks.append)
    proc.write(b"sleep 30 & echo bg=$!\n")
    await _until(lambda: re.search(rb"bg=(\d+)\r?\n", b"".join(chunks)) is not None)
    bg = int(re.search(rb"bg=(\d+)", b"".join(chunks)).group(1))
    proc.resize(90, 30)
    assert await proc.close() is not None
    await _until(lambda: _gone(bg) and _gone(proc.pid), timeout=3)


async def test_pty_process_missing_program() -> None:
    with pytest.raises(OSError):
        PtyProcess(["/nonexistent/shell"])
