"""The watchdog's side process (see `keras_pixelembed.watchdog`); runs as a plain script, without
importing the package, so that it starts in milliseconds and holds no framework.

    python _watcher.py PARENT_PID

Reads lines from standard input: `arm SECONDS MESSAGE` (re)sets the deadline and the message,
`kick` moves the deadline on, `stop` (or the end of input: the parent closed the pipe or died)
ends the watch. When the deadline passes, it writes `pixelembed: error: MESSAGE` to its standard
error (the parent's), sends SIGTERM to the parent and, if the parent still runs 5 s later, SIGKILL.
"""

import os
import select
import signal
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end(pid: int, message: str) -> None:
    sys.stderr.write(f"pixelembed: error: {message}\n")
    sys.stderr.flush()
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        if not _alive(pid):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)


def main() -> None:
    parent = int(sys.argv[1])
    stdin = sys.stdin.fileno()
    timeout, message, deadline = None, "", None
    buffer = b""
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([stdin], [], [], wait)
        if not ready:
            _end(parent, message)
            return
        chunk = os.read(stdin, 65536)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            command, _, rest = line.decode("utf-8", "replace").partition(" ")
            if command == "stop":
                return
            if command == "arm":
                seconds, _, message = rest.partition(" ")
                timeout = float(seconds)
            if timeout is not None:
                deadline = time.monotonic() + timeout


if __name__ == "__main__":
    main()
