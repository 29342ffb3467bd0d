"""Worker process of one IEC 61850 device: runs a :class:`Session` and talks to the driver over a socket.

Started by :class:`gridedge.protocols.iec61850.Iec61850Driver` as
``python -m gridedge.protocols.iec61850_worker FD``. Messages are pickled tuples
(``multiprocessing.connection.Connection``):

driver → worker: ``("connect", seq, spec)``, ``("poll", seq)``, ``("close", seq)``
worker → driver: ``("reply", seq, ok, payload)`` with payload the result or ``(kind, message)``;
``("push", rcb, (idx, ts, value, quality), gateway_ts, entry_id)`` for every report;
``("log", levelno, logger_name, message, traceback_or_None)`` for every log record at or above the level
the driver passed (``argv[2]``): the driver re-emits it through the daemon's own logging, so worker lines
have the daemon's format and destination. Only what the C library prints itself goes to the inherited
stderr.

The worker ends with ``os._exit``: libiec61850's receive thread may sit in a report callback waiting for
the GIL, and tearing the connection down from Python could deadlock or crash; the OS closes the socket.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from gridedge.protocols.iec61850_session import Session, SessionError

log = logging.getLogger("gridedge.protocols.iec61850")


class _ToDriver(logging.Handler):
    """Every record goes to the driver as a message (the driver logs it in the daemon)."""

    def __init__(self, send: Any):
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tb = self.formatter.formatException(record.exc_info) if record.exc_info else None  # type: ignore[union-attr]
            self._send(("log", record.levelno, record.name, record.getMessage(), tb))
        except Exception:
            self.handleError(record)


def main(fd: int, level: int = logging.INFO) -> None:
    conn = Connection(fd)
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

    handler = _ToDriver(send)
    handler.setFormatter(logging.Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("GRIDEDGE_IEC61850_LOG", level))

    session: Session | None = None
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind, seq = msg[0], msg[1]
            if kind == "close":
                if session is not None:
                    session.release()
                send(("reply", seq, True, None))
                break
            try:
                if kind == "connect":
                    session = Session(msg[2], send)
                    result: Any = session.connect()
                elif kind == "poll" and session is not None:
                    result = session.poll()
                else:
                    raise SessionError("link", f"unexpected request {kind!r}")
                send(("reply", seq, True, result))
            except SessionError as exc:
                send(("reply", seq, False, (exc.kind, str(exc))))
            except Exception as exc:
                log.exception("event=worker_error")
                send(("reply", seq, False, ("link", f"{type(exc).__name__}: {exc}")))
    finally:
        if session is not None:
            session._closing = True
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else logging.INFO)
