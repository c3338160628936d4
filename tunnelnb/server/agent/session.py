"""One login session inside a tunnel: the shell a ``connect`` frame opens.

:class:`ShellSession` logs in (through a backend of :mod:`.shells`), types
``command`` frames into the shell, pumps its output back as
``command_response`` frames the way the emulated SDK reads it (see
:mod:`.quirks`), closes it when idle and reports how it ended.

The ``port`` a ``connect`` frame may carry (the C# SDK reads it) is ignored on
purpose: the device, not the cloud, decides where its SSH server is
(``ssh_host``/``ssh_port``), so the tunnel cannot be used to probe other ports.
"""

from __future__ import annotations

import asyncio
import codecs
import hmac
import logging
from typing import TYPE_CHECKING

from ...protocol.frames import SSH_IDLE_REQUEST_ID, Frame, Op, Status, encode_chunks
from .quirks import (
    C_SDK_CHANNEL_FAILED,
    C_SDK_JSON_BYTES,
    C_SDK_QUIRKS,
    C_SDK_READ_BYTES,
    COALESCE_SECONDS,
    CSHARP_FIRST_OUTPUT_SECONDS,
    CSHARP_READ_BYTES,
    c_sdk_json_size,
)
from .shells import Backend, Inbox, LocalBackend, LoginFailed, SSHBackend

if TYPE_CHECKING:
    from .tunnel import Tunnel

__all__ = ["ShellSession"]

log = logging.getLogger(__name__)

#: Output taken at most per batch, in messages' worth: a batch ends in a frame that is not full, so
#: the bigger the batch, the fewer frames a stream takes (20 MB of terminal output: about 2,100 frames
#: at 16, 2,440 at 4, 2,010 at the fewest).
_BATCH_MESSAGES = 16


class ShellSession:
    """A ``connect`` frame's shell: login, output pump, idle timer, end-of-session report."""

    def __init__(self, tunnel: Tunnel, connect: Frame) -> None:
        self.tunnel = tunnel
        self.agent = tunnel.agent
        self.connect_id = connect.request_id
        self.last_command_id: str | None = None
        data = connect.data
        self.username: str = data["username"]
        self._password: str = data["password"]
        self.inbox = Inbox()
        self.backend: Backend | None = None
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._last_input = self._loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended = False  # once set, this session sends no more frames
        self._cancelled = False
        self._interrupted = False
        self.task = asyncio.create_task(self._run(), name=f"tunnelnb-agent-session-{self.connect_id}")

    @property
    def ready(self) -> bool:
        return self.backend is not None and not self.ended

    def output_id(self) -> str:
        """The request_id stamped on output, as the chosen SDK would."""
        quirks = self.agent.quirks
        if quirks in C_SDK_QUIRKS:
            return self.tunnel.latest_id
        if quirks == "csharp-sdk":
            return self.connect_id
        return self.last_command_id or self.connect_id

    def write(self, data: bytes, request_id: str) -> None:
        """Type ``data`` into the shell (queued until the login is done)."""
        self.last_command_id = request_id
        self._last_input = self._loop.time()
        if self.backend is not None:
            self.backend.write(data)
        else:
            self._pending.append(data)

    def interrupt(self) -> bool:
        """Type Ctrl-C, as a user at the terminal would: the foreground job gets SIGINT.

        Sent before a session is closed, so a command that nobody reads any more
        (``yes``, ``tail -f``) stops the way its user would stop it and may clean
        up, rather than only by the hang-up that closing the terminal sends.
        False if there is no shell to type into.
        """
        if self.backend is None or self.ended:
            return False
        self._interrupted = True
        self.backend.write(b"\x03")
        return True

    def cancel(self) -> None:
        """End the session without a report (replaced, disconnected, abandoned, agent stopping).

        Types Ctrl-C first (see :meth:`interrupt`); the task's cleanup then closes
        the SSH channel or hangs up on the local shell's whole session.  Cancels the
        task once only: a second cancel would interrupt its cleanup.
        """
        if not (self._cancelled or self._interrupted):
            self.interrupt()
        self.ended = True
        if not self._cancelled:
            self._cancelled = True
            self.task.cancel()

    async def _run(self) -> None:
        agent = self.agent
        try:
            try:
                self.backend = await self._open()
            except LoginFailed as exc:
                log.warning("login for user %r failed: %s", self.username, exc.message)
                if agent.quirks in C_SDK_QUIRKS:  # one answer to every SSH failure (wss_client.c)
                    frame = Frame.disconnect(self.connect_id, Status.CHANNEL_FAILED, C_SDK_CHANNEL_FAILED)
                else:
                    frame = Frame.disconnect(self.connect_id, exc.status_code, exc.message)
                await self._report(frame)
                return
            finally:
                self._password = ""
            log.info("shell open for user %r (%s)", self.username, agent.shell_target())
            for data in self._pending:
                self.backend.write(data)
            self._pending.clear()
            if agent.quirks == "csharp-sdk":
                await self.inbox.wait(timeout=CSHARP_FIRST_OUTPUT_SECONDS)
                first = self._decoder.decode(self.inbox.take(CSHARP_READ_BYTES))
                await self.tunnel.send(Frame(Op.CONNECT_RESPONSE, self.connect_id, first))
            elif agent.quirks == "none":
                await self.tunnel.send(Frame(Op.CONNECT_RESPONSE, self.connect_id, None))
            self._last_input = self._loop.time()  # the idle clock starts once the shell is up
            self._arm_idle(agent.idle_timeout)
            await self._pump()
            code = await self.backend.exit_code()
            message = "the SSH session ended" if code is None else f"the shell exited with status {code}"
            log.info("session of user %r ended: %s", self.username, message)
            await self._report(Frame.disconnect(self.output_id(), Status.SESSION_ENDED, message))
        except Exception as exc:  # a bug: say so instead of leaving the application waiting
            log.exception("shell session of user %r failed", self.username)
            await self._report(Frame.disconnect(self.output_id(), Status.SESSION_ENDED, f"the agent failed: {exc}"))
        finally:
            self.ended = True
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            if self.backend is not None:
                await self.backend.close()
            self.tunnel.session_done(self)

    async def _open(self) -> Backend:
        agent = self.agent
        if agent.local_shell is not None:
            user, password = agent.local_shell
            ok_user = hmac.compare_digest(self.username.encode("utf-8", "surrogatepass"), user.encode())
            ok_password = hmac.compare_digest(self._password.encode("utf-8", "surrogatepass"), password.encode())
            if not (ok_user and ok_password):
                raise LoginFailed(
                    Status.AUTH_FAILED,
                    f"SSH login refused for user {self.username!r} on the local shell: wrong user name or password",
                )
            return LocalBackend.open(agent.shell, self.username, agent.term_size, self.inbox, agent.shell_account)
        return await SSHBackend.open(
            agent.ssh_host, agent.ssh_port, self.username, self._password, agent.term_size, self.inbox
        )

    async def _report(self, frame: Frame) -> None:
        """Send the session's last word, unless the session was cancelled meanwhile."""
        if not self.ended:
            self.ended = True
            await self.tunnel.send(frame)

    # -- idle timeout ------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        if self.agent.idle_timeout > 0:
            self._idle_handle = self._loop.call_later(max(delay, 0.0), self._idle_check)

    def _idle_check(self) -> None:
        remaining = self._last_input + self.agent.idle_timeout - self._loop.time()
        if remaining > 0:
            self._arm_idle(remaining)
            return
        seconds = f"{self.agent.idle_timeout:g}"
        log.info("session of user %r idle for %s s: closing it", self.username, seconds)
        self.cancel()  # no "shell exited" report: the idle disconnect says it all
        frame = Frame.disconnect(SSH_IDLE_REQUEST_ID, Status.SSH_IDLE, f"SSH session idle for {seconds} s")
        self.tunnel.spawn(self.tunnel.send(frame))

    # -- output ----------------------------------------------------------------

    async def _pump(self) -> None:
        quirks = self.agent.quirks
        if quirks in C_SDK_QUIRKS:
            await self._pump_c_sdk(quirks)
        elif quirks == "csharp-sdk":
            await self._pump_chunks(CSHARP_READ_BYTES)
        else:
            await self._pump_coalesced()

    async def _pump_coalesced(self) -> None:
        """Send what is there at once; output that arrives while a send is in flight is batched.

        No timer: a short reply goes out as soon as it is read (a linger of a few
        milliseconds was most of a trivial command's round trip), while a stream
        fills frames by itself because it piles up during each send.  No extra
        turn of the event loop either: every read of the turn that woke the pump
        is in already.  Each batch is JSON-escaped once and sent as the messages
        :func:`encode_chunks` cuts; ASCII output (most of it) without decoding.
        """
        inbox, limit, tunnel, decoder = self.inbox, self.agent.max_message_bytes, self.tunnel, self._decoder
        while True:
            await inbox.wait()
            raw = inbox.take(_BATCH_MESSAGES * limit)
            text: str | bytes
            if raw.isascii() and not decoder.getstate()[0]:  # no part of a character waits for its end
                text = raw
            else:
                text = decoder.decode(raw, inbox.finished)
            if text:
                for message in encode_chunks(text, self.output_id(), max_bytes=limit):
                    await tunnel.send_output_message(message)
            if inbox.finished:
                return

    async def _pump_chunks(self, size: int) -> None:
        """The C# SDK: reads of at most ``size`` bytes, decoded without splitting characters."""
        inbox = self.inbox
        while True:
            await inbox.wait()
            carried = len(self._decoder.getstate()[0])  # part of a character from the last read
            text = self._decoder.decode(inbox.take(size - carried), inbox.finished)
            if text:
                await self.tunnel.send_output(Frame(Op.COMMAND_RESPONSE, self.output_id(), text))
            if inbox.finished:
                return

    async def _pump_c_sdk(self, quirks: str) -> None:
        """The C SDK: raw reads of at most 2,048 bytes, sent as the raw bytes they are.

        Its reader thread blocks in each send, so output piles up meanwhile and
        is read in full buffers: coalesce for a few milliseconds, as it would.
        A read stops at its first NUL (a C string).  ``c-sdk``: stray bytes may
        follow a full read (``ssh_client.c`` does not NUL-terminate it; see
        :class:`~.quirks.StrayBytes`).  ``c-sdk-1.1``: a chunk whose JSON does not
        fit the 2,304-byte print buffer is lost (v1.1.3's ``wss_client.c``).
        """
        inbox, stray = self.inbox, self.agent.stray_bytes
        while True:
            await inbox.wait(fill=C_SDK_READ_BYTES, linger=COALESCE_SECONDS)
            raw = inbox.take(C_SDK_READ_BYTES)
            nul = raw.find(b"\0")
            if nul >= 0:
                raw = raw[:nul]  # a C string ends at its first NUL
            elif len(raw) == C_SDK_READ_BYTES and quirks == "c-sdk":
                junk = stray.after_full_read()
                if junk:
                    log.debug("c-sdk quirk: %d stray bytes after a full read", len(junk))
                    raw += junk
            if raw:
                request_id = self.output_id()
                size = c_sdk_json_size(request_id, raw) if quirks == "c-sdk-1.1" else 0
                if size > C_SDK_JSON_BYTES:
                    log.debug("c-sdk-1.1 quirk: dropped %d bytes of output (%d-byte JSON)", len(raw), size)
                else:
                    # The bytes ride in a str as surrogateescape'd lone surrogates; encode_as puts them
                    # back into the message as they are (the message need not be valid UTF-8).
                    text = raw.decode("utf-8", "surrogateescape")
                    await self.tunnel.send_output(Frame(Op.COMMAND_RESPONSE, request_id, text))
            if inbox.finished:
                return
