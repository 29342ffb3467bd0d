"""Worker process of one IEC 104 link: c104 runs here, never in the daemon.

Started by :class:`gridedge.protocols.iec104.Iec104Driver` as
``python -m gridedge.protocols.iec104_worker FD PARENT_PID``. A bug in the C extension (c104 2.2.1
segfaults when a peer sends junk and closes while STARTDT goes out) kills this process only; the driver
sees the socket close, reaps the child and raises ``ConnectionLost``.

Messages are pickled tuples over a socketpair (``multiprocessing.connection.Connection``):

driver → worker: ``("connect", seq, spec)``, ``("poll", seq)``, ``("close", seq)``
worker → driver: ``("reply", seq, ok, payload)`` (payload: the result, or ``(kind, message)``);
``("push", local_idx, ts, value, quality, gateway_ts, cot)`` — numpy arrays, one message per flush;
``("stats", counters, new_keys)``; ``("log", levelno, logger, message)`` for every log record, so the
worker's lines come out of the daemon's own handlers in its ``key=value`` format.

The worker dies with its parent: ``PR_SET_PDEATHSIG`` (SIGKILL) on Linux, and EOF on the socket.
It ends with ``os._exit``: c104's threads may sit in a callback waiting for the GIL.
"""

import asyncio
import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from gridedge.gateway.logs import kv

log = logging.getLogger("gridedge.protocols.iec104")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _PipeHandler(logging.Handler):
    """Ship log records to the driver, which re-emits them through the daemon's logging."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg = f"{msg} traceback={logging.Formatter().formatException(record.exc_info)!r}"
            self._send(("log", record.levelno, record.name, msg))
        except Exception:
            self.handleError(record)


def main(fd: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which closes us
    faulthandler.enable()  # a crash in c104 leaves its Python stack on stderr (the driver logs it)
    conn = Connection(fd)
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(send)]
    root.setLevel(os.environ.get("GRIDEDGE_IEC104_LOG", "INFO"))
    try:
        asyncio.run(_serve(conn, send))
    finally:
        sys.stderr.flush()
        os._exit(0)


async def _serve(conn: Connection, send: Any) -> None:
    from gridedge.protocols.iec104_session import Session, SessionError

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(inbox.put_nowait, None)
                return
            loop.call_soon_threadsafe(inbox.put_nowait, msg)

    threading.Thread(target=reader, name="iec104-worker-rx", daemon=True).start()
    session: Session | None = None
    while True:
        msg = await inbox.get()
        if msg is None:  # the driver is gone
            return
        kind, seq = msg[0], msg[1]
        if kind == "close":
            if session is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.to_thread(session.close), 3.0)
            send(("reply", seq, True, None))
            return
        try:
            if kind == "connect":
                session = Session(msg[2], send)
                status = await session.connect()
                result: Any = (status, session.counters_snapshot())
            elif kind == "poll" and session is not None:
                image, status = await session.poll()
                result = (image, status, session.counters_snapshot())
            else:
                raise SessionError("link", f"unexpected request {kind!r}")
            send(("reply", seq, True, result))
        except SessionError as exc:
            send(("reply", seq, False, (exc.kind, str(exc))))
        except Exception as exc:
            log.exception(kv("iec104_worker_error", request=kind))
            send(("reply", seq, False, ("link", f"{type(exc).__name__}: {exc}")))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
