"""Open a self-contained HTML file in real headless Chromium and report what a person would see.

Tests of generated HTML (reports, charts) want two things a parser cannot give: the DOM *after*
the page's scripts ran, and every console error, warning and uncaught exception on the way. This
module drives Debian's ``chromium`` (``scripts/install-chromium``) over the DevTools protocol
with ``--remote-debugging-pipe``: the browser reads NUL-separated JSON commands on its fd 3 and
writes replies and events on its fd 4. That needs no Python library, no port and no WebDriver.

One browser is started per :func:`render_page` call (about a second) and always killed, with its
whole process group, and its temporary profile removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BrowserError",
    "ConsoleMessage",
    "RenderedPage",
    "chromium_flags",
    "find_chromium",
    "render_page",
]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "run scripts/install-chromium (as root) to install Debian's chromium"

# Console API call types that count as errors or warnings (``console.assert`` fails as error).
_CONSOLE_LEVELS = {"error": "error", "assert": "error", "warning": "warning"}
# Log.entryAdded levels kept (network failures, CSP and other browser-side reports).
_LOG_LEVELS = {"error": "error", "warning": "warning"}


class BrowserError(RuntimeError):
    """Chromium could not be started, died, refused a command, or an expression threw."""


@dataclass(frozen=True)
class ConsoleMessage:
    """One console error or warning, or one uncaught exception (``exception`` true, level
    ``error``). ``source`` is ``console`` (the page called console.*), ``exception``, or
    ``log:<source>`` for the browser's own reports, e.g. ``log:network`` for a failed load."""

    level: str
    text: str
    source: str
    exception: bool = False
    url: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f" ({self.url}:{self.line})" if self.url else ""
        return f"[{self.level}/{self.source}] {self.text}{where}"


@dataclass(frozen=True)
class RenderedPage:
    """What the browser showed: the serialized DOM after load and scripts, the console errors,
    warnings and uncaught exceptions seen until then, and the values of the ``evaluate``
    expressions, in order."""

    dom: str
    console: list[ConsoleMessage] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    @property
    def errors(self) -> list[ConsoleMessage]:
        """Console errors and uncaught exceptions (no warnings): what "renders without console
        errors" asserts is empty."""
        return [message for message in self.console if message.level == "error"]

    @property
    def warnings(self) -> list[ConsoleMessage]:
        """Console and browser warnings."""
        return [message for message in self.console if message.level == "warning"]


def find_chromium() -> str | None:
    """Path of the Chromium (or Chrome) binary on PATH, or None when none is installed."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_flags(user_data_dir: Path, *, window_size: tuple[int, int] = (1280, 900)) -> list[str]:
    """Command-line flags for a quiet, isolated headless browser.

    ``--no-sandbox`` only as root, where Chromium refuses to start without it (CI runs as root);
    elsewhere the sandbox stays on. The background-networking flags matter on a machine with no
    network: without them Chromium keeps trying, and failing, to reach Google's services.
    """
    width, height = window_size
    flags = [
        "--headless=new",
        "--remote-debugging-pipe",
        f"--user-data-dir={user_data_dir}",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-breakpad",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--mute-audio",
        "--hide-scrollbars",
        "--password-store=basic",
        "--use-mock-keychain",
    ]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    return [*flags, "about:blank"]


def render_page(
    path: Path | str,
    *,
    evaluate: Sequence[str] = (),
    wait_for: str | None = None,
    timeout: float = 60.0,
    chromium: str | None = None,
    window_size: tuple[int, int] = (1280, 900),
) -> RenderedPage:
    """Load ``path`` (a local HTML file) in headless Chromium and report the page after load.

    After the load event the page gets two animation frames (so rendering kicked off from
    ``load`` or ``requestAnimationFrame`` has run), then, if ``wait_for`` is given, that
    JavaScript expression is polled until truthy (for charts that draw later, e.g. after a
    transition). Then each ``evaluate`` expression is run in the page (promises awaited) and its
    JSON value returned in ``RenderedPage.values``, e.g.
    ``"document.querySelectorAll('svg circle').length"``; a DOM node is not JSON and comes back
    as ``{}``, so return counts, strings or lists of attributes instead.

    Raises FileNotFoundError for a missing file, BrowserError when Chromium is missing, dies or
    an expression throws, and TimeoutError when the whole render takes longer than ``timeout``
    seconds.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(file)
    binary = chromium or find_chromium()
    if binary is None:
        raise BrowserError(f"no chromium on PATH: {INSTALL_HINT}")
    deadline = time.monotonic() + timeout
    with _browser(binary, window_size) as browser:
        session = browser.open_page(deadline)
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable", session=session, deadline=deadline)
        navigated = browser.call(
            "Page.navigate", {"url": file.as_uri()}, session=session, deadline=deadline
        )
        if navigated.get("errorText"):
            raise BrowserError(f"navigating to {file}: {navigated['errorText']}")
        browser.wait_for_event("Page.loadEventFired", session=session, deadline=deadline)
        browser.evaluate(
            "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))",
            session=session,
            deadline=deadline,
        )
        if wait_for is not None:
            while not browser.evaluate(wait_for, session=session, deadline=deadline):
                if time.monotonic() + 0.05 > deadline:
                    raise TimeoutError(f"{wait_for!r} still falsy after {timeout} s")
                time.sleep(0.05)
        values = [browser.evaluate(e, session=session, deadline=deadline) for e in evaluate]
        dom = browser.evaluate(
            "document.documentElement.outerHTML", session=session, deadline=deadline
        )
        return RenderedPage(dom=dom, console=list(browser.console), values=values)


@contextlib.contextmanager
def _browser(binary: str, window_size: tuple[int, int]) -> Iterator[_Browser]:
    """A started browser with a fresh profile; on exit the process group is killed and the
    profile removed, whatever happened inside."""
    profile = Path(tempfile.mkdtemp(prefix="drl-chromium-"))
    browser: _Browser | None = None
    try:
        browser = _Browser.start(binary, profile, window_size)
        yield browser
    finally:
        if browser is not None:
            browser.stop()
        for _ in range(10):  # a dying child may still write into the profile for a moment
            shutil.rmtree(profile, ignore_errors=True)
            if not profile.exists():
                break
            time.sleep(0.1)


def _high_fd(fd: int) -> int:
    """Move ``fd`` to a number >= 10 (close-on-exec), so that mapping it onto the child's fd 3
    or 4 is never a no-op that would leave it close-on-exec."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _Browser:
    """One Chromium process and its DevTools pipe (commands, replies, buffered events)."""

    def __init__(self, pid: int, commands: int, replies: int, log: Path) -> None:
        self.pid = pid
        self._commands = commands  # our write end; the browser reads it as fd 3
        self._replies = replies  # our read end; the browser writes fd 4
        self._log = log
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.console: list[ConsoleMessage] = []

    @classmethod
    def start(cls, binary: str, profile: Path, window_size: tuple[int, int]) -> _Browser:
        """Spawn the browser in its own session (so its whole process group can be killed),
        with the pipe ends on fds 3 and 4 and its output in a log for error messages."""
        command_read, command_write = (_high_fd(fd) for fd in os.pipe())
        reply_read, reply_write = (_high_fd(fd) for fd in os.pipe())
        log = profile / "chromium.log"
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, command_read, 3),
            (os.POSIX_SPAWN_DUP2, reply_write, 4),
        ]
        argv = [binary, *chromium_flags(profile, window_size=window_size)]
        try:
            pid = os.posix_spawn(binary, argv, os.environ, file_actions=actions, setsid=True)
        except OSError as error:
            for fd in (command_read, command_write, reply_read, reply_write):
                os.close(fd)
            raise BrowserError(f"cannot start {binary}: {error}") from error
        os.close(command_read)
        os.close(reply_write)
        return cls(pid, command_write, reply_read, log)

    def stop(self) -> None:
        """Ask the browser to close, give it a moment, then SIGKILL its process group (renderer,
        GPU and zygote processes included) and reap it."""
        with contextlib.suppress(OSError):
            self._send("Browser.close", {}, None)
        end = time.monotonic() + 3
        while time.monotonic() < end and not self._exited():
            time.sleep(0.02)
        # Kill before reaping: the unreaped leader keeps the group id from being reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _log_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-20:])

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        return self._next_id

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """The next message from the browser; events are recorded as they pass."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium: no answer while waiting for {waiting_for}")
            ready, _, _ = select.select([self._replies], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(
                    f"chromium exited while waiting for {waiting_for}; its output:\n"
                    + self._log_tail()
                )
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            self._record(message)
        return message

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        deadline: float,
    ) -> dict[str, Any]:
        """Send one command and return its result; events arriving meanwhile are kept."""
        call_id = self._send(method, params or {}, session)
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_for_event(self, method: str, *, session: str, deadline: float) -> dict[str, Any]:
        """The first event ``method`` of ``session``, buffered or still to come."""
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            self._receive(deadline, method)

    def open_page(self, deadline: float) -> str:
        """A new blank tab, attached in flat mode; returns its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)
        attached = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            deadline=deadline,
        )
        session: str = attached["sessionId"]
        return session

    def evaluate(self, expression: str, *, session: str, deadline: float) -> Any:
        """The JSON value of ``expression`` in the page (a promise is awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
            deadline=deadline,
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"{expression!r} threw: {_exception_text(result['exceptionDetails'])}"
            )
        return result["result"].get("value")

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            level = _CONSOLE_LEVELS.get(params.get("type", ""))
            if level:
                frame = (params.get("stackTrace") or {}).get("callFrames") or [{}]
                text = " ".join(_describe(arg) for arg in params.get("args", []))
                self.console.append(
                    ConsoleMessage(
                        level=level,
                        text=text,
                        source="console",
                        url=frame[0].get("url") or None,
                        line=_one_based(frame[0].get("lineNumber")),
                    )
                )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(
                ConsoleMessage(
                    level="error",
                    text=_exception_text(details),
                    source="exception",
                    exception=True,
                    url=details.get("url") or None,
                    line=_one_based(details.get("lineNumber")),
                )
            )
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            level = _LOG_LEVELS.get(entry.get("level", ""))
            if level and entry.get("source") != "console-api":  # those came as consoleAPICalled
                self.console.append(
                    ConsoleMessage(
                        level=level,
                        text=entry.get("text", ""),
                        source=f"log:{entry.get('source', 'other')}",
                        url=entry.get("url") or None,
                        line=_one_based(entry.get("lineNumber")),
                    )
                )
        elif method.startswith("Page."):
            self._events.append(event)


def _describe(remote: dict[str, Any]) -> str:
    """A console argument as the DevTools console would print it, roughly."""
    if "value" in remote:
        value = remote["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(remote.get("unserializableValue") or remote.get("description") or remote["type"])


def _exception_text(details: dict[str, Any]) -> str:
    """The thrown value's description (message and stack) or, failing that, the bare text."""
    exception = details.get("exception") or {}
    description = exception.get("description")
    if description is None and "value" in exception:
        description = _describe(exception)
    text = str(details.get("text", "Uncaught"))
    return f"{text} {description}" if description else text


def _one_based(line: int | None) -> int | None:
    return None if line is None else line + 1
