"""Modbus TCP servers that are not pymodbus and not gridedge: a libmodbus C server and npm modbus-serial.

Both are separate processes on a free 127.0.0.1 port speaking the same line protocol on stdin (see
tests/peers/libmodbus_server.c): ``hr|ir|co|di ADDR V...`` sets values, ``exc FC ADDR COUNT CODE`` scripts
an exception response, ``hang 1`` makes the device accept requests and never answer, ``clear`` undoes
both; every command is acknowledged with ``ok``. A test stops (or kills, to simulate a crash) only the
process it started, by its PID. Also here: an encoder of register words that is independent of
gridedge's codec (``struct`` per type, word and byte order), so a round trip checks the codec.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent / "peers"
LIBMODBUS_SOURCE = PEERS / "libmodbus_server.c"
NODE_DIR = PEERS / "node"
NODE_SCRIPT = NODE_DIR / "modbus_serial_server.js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_libmodbus_server(out_dir: Path) -> Path:
    """Compile tests/peers/libmodbus_server.c with gcc; skips when gcc or libmodbus-dev is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc): the libmodbus peer cannot be built")
    if not Path("/usr/include/modbus/modbus.h").exists():
        pytest.skip("libmodbus headers missing (apt-get install libmodbus-dev; scripts/test.sh does)")
    exe = out_dir / "libmodbus_server"
    proc = subprocess.run(
        [gcc, "-O1", "-Wall", "-o", str(exe), str(LIBMODBUS_SOURCE), "-I/usr/include/modbus", "-lmodbus"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"gcc failed:\n{proc.stderr}"
    return exe


def node_server_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the modbus-serial peer cannot run")
    if not (NODE_DIR / "node_modules" / "modbus-serial").is_dir():
        pytest.skip("modbus-serial not installed (npm ci --prefix tests/peers/node; scripts/test.sh does)")
    return [node, str(NODE_SCRIPT)]


class PeerServer:
    """One peer server process; ``argv`` + port (+ table size) on its command line."""

    def __init__(self, argv: list[str], *, port: int | None = None, size: int = 1000) -> None:
        self.argv, self.size = argv, size
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> PeerServer:
        # A restart on the same port may find it in TIME_WAIT for a moment: both servers set SO_REUSEADDR.
        self.proc = subprocess.Popen(
            [*self.argv, str(self.port), str(self.size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        line = self._line(10.0)
        assert line == f"listening {self.port}", f"peer did not start: {line!r} {self._stderr()}"
        return self

    def _stderr(self) -> str:
        proc = self.proc
        if proc is None or proc.poll() is None or proc.stderr is None:
            return ""
        return proc.stderr.read()

    def _line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"peer {self.argv[-1]} said nothing within {timeout} s")
        return self.proc.stdout.readline().strip()

    def send(self, command: str) -> None:
        """One command; returns once the peer acknowledged it."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self._line(5.0) == "ok", command

    def set_words(self, table: str, address: int, words: list[int]) -> None:
        """Registers (``hr``/``ir``) or bits (``co``/``di``) from ``address``, in slices of 100 per command."""
        for i in range(0, len(words), 100):
            self.send(f"{table} {address + i} " + " ".join(str(w) for w in words[i : i + 100]))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """A crash: SIGKILL to the process this object started, by its PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# ------------------------------------------------------------------------------ independent encoder
_FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}


def encode_words(raw: float, typ: str, word_order: str = "big", byte_order: str = "big") -> list[int]:
    """The register words a device holds for ``raw`` (before scale/offset), by the Modbus conventions:
    big word order = most significant word first ("ABCD"); byte_order little swaps bytes in each word."""
    fmt = _FMT[typ]
    value = raw if typ.startswith("float") else int(raw)
    data = struct.pack(">" + fmt, value)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]
