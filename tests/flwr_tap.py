"""Start a real flower-superlink whose Fleet API records every message and object it receives.

``python tests/flwr_tap.py --capture-dir DIR -- <flower-superlink arguments>``: the SuperLink's Fleet
handlers ``push_messages`` and ``push_object`` are wrapped to write each request's bytes to DIR before
the normal handling, so a test sees exactly what crossed from the SuperNodes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture-dir", type=Path, default=None)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    rest = [a for a in args.rest if a != "--"]
    if args.capture_dir is not None:
        from flwr.superlink.servicer.fleet import fleet_handlers as fh

        cap = args.capture_dir
        cap.mkdir(parents=True, exist_ok=True)
        counter = itertools.count()
        lock = threading.Lock()

        def dump(kind: str, data: bytes) -> None:
            with lock:
                n = next(counter)
            (cap / f"{n:06d}-{kind}.bin").write_bytes(data)

        orig_msgs, orig_obj = fh.push_messages, fh.push_object

        def push_messages(request, state):
            dump("msgs", request.SerializeToString())
            return orig_msgs(request=request, state=state)

        def push_object(request, state):
            dump("obj", request.SerializeToString())
            return orig_obj(request=request, state=state)

        fh.push_messages, fh.push_object = push_messages, push_object
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *rest]
    flower_superlink()


if __name__ == "__main__":
    main()
