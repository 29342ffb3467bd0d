"""Worker process of one IEC 61850 device: runs a :class:`Session` and talks to the driver over a socket.

Started by :class:`gridedge.protocols.iec61850.Iec61850Driver` as
``python -m gridedge.protocols.iec61850_worker FD``. Messages are pickled tuples
(``multiprocessing.connection.Connection``):

driver → worker: ``("connect", seq, spec)``, ``("poll", seq)``, ``("close", seq)``
worker → driver: ``("reply", seq, ok, payload)`` with payload the result or ``(kind, message)``;
``("push", rcb, (idx, ts, value, quality), gateway_ts, entry_id)`` for every report.

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


def main(fd: int) -> None:
    logging.basicConfig(level=os.environ.get("GRIDEDGE_IEC61850_LOG", "WARNING"), stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")  # fmt: skip
    conn = Connection(fd)
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

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
    main(int(sys.argv[1]))
