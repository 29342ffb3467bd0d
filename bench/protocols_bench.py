"""Points/s per field protocol against the local simulator servers, in one run.

Runs the three protocol benches one after another (each starts its own real server on loopback; the
Modbus one in a child process so the client's CPU is measured alone) and prints their tables together:

    .venv/bin/python bench/protocols_bench.py            # defaults: modest sizes, ~1 minute
    .venv/bin/python bench/protocols_bench.py --quick    # smoke run

Each bench can also be run on its own with more options (see their --help).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 s per mode")
    args = ap.parse_args()
    secs = "1" if args.quick else "3"
    runs = [
        ("Modbus TCP: coalesced vs one request per point", ["modbus_bench.py", "--points", "100", "1000", "--seconds", secs]),
        ("IEC 61850 MMS: polling vs reports", ["protocols_bench_iec61850.py", "--groups", "10", "--seconds", secs]),
        ("IEC 60870-5-104: GI polling vs spontaneous", ["protocols_bench_iec104.py", "--points", "500" if args.quick else "2000",
                                                        "--rounds", "2" if args.quick else "5"]),
    ]  # fmt: skip
    status = 0
    for title, cmd in runs:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(HERE / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=900
        )
        print(f"\n## {title}  ({time.perf_counter() - t0:.0f} s)\n")
        print(out.stdout.strip() or out.stderr.strip()[-2000:])
        status |= out.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
