"""A watchdog that ends this process when it makes no progress: the guard of every
multi-process run (a peer that never connects, a collective that never returns, a distributed
runtime that hangs on exit).

The watch runs in a small side process, not a thread: a process stuck inside a framework's C++
code (holding the interpreter lock, or already finalizing, or ignoring SIGTERM) cannot be ended
from within. When the deadline passes the side process prints one line,
`pixelembed: error: MESSAGE`, then sends SIGTERM and, 5 s later, SIGKILL.

    with Watchdog(300, "no peer within 300 s") as watchdog:
        for step in steps:
            step()
            watchdog.kick()
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from keras_pixelembed.validation import check_number

_WATCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_watcher.py")


class Watchdog:
    """Ends this process `timeout` seconds after the last `kick` (or `arm`), printing `message`.

    Args:
        timeout: seconds without progress after which the process is ended.
        message: one line saying what did not happen and what to do.
    """

    def __init__(self, timeout: float, message: str):
        self._process = subprocess.Popen(
            [sys.executable, _WATCHER, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
        self._last_kick = 0.0
        self.arm(timeout, message)

    def _send(self, line: str) -> None:
        if self._process.stdin is None or self._process.stdin.closed:
            return
        self._process.stdin.write((line.replace("\n", " ") + "\n").encode())
        self._process.stdin.flush()

    def arm(self, timeout: float, message: str) -> None:
        """Sets a new deadline `timeout` seconds from now and the message printed when it passes."""
        timeout = check_number("timeout", timeout, minimum=0, strict=True)
        self._send(f"arm {timeout!r} {message}")
        self._last_kick = time.monotonic()

    def kick(self) -> None:
        """Moves the deadline on (at most one message a second reaches the side process)."""
        now = time.monotonic()
        if now - self._last_kick >= 1.0:
            self._send("kick")
            self._last_kick = now

    def close(self) -> None:
        """Ends the watch; the process is never ended after this."""
        try:
            self._send("stop")
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
