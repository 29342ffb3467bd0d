"""Versioned global-model files: written by the ServerApp (and by each site's ClientApp when a new
global model arrives), read by the daemon (``load_latest_model``) to apply the prior hot.

Layout of a model directory::

    global-r00003-1a2b3c4d5e.npz   the aggregated FedAvg arrays (allow-listed names) of round 3
    global-r00003-1a2b3c4d5e.json  {"version", "round", "created", "sites", ...}; written last = complete

The version string ``r00003-1a2b3c4d5e`` is the fleet round plus a digest of the arrays: events that the
prior influenced carry it (``events.model_version``), so an auditor can find the exact model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays
from .contribution import global_classifier
from .prior import finalise_centres, finalise_prior

__all__ = [
    "dp_releases",
    "is_current_format",
    "latest_global",
    "list_models",
    "load_latest_classifier",
    "load_latest_model",
    "model_version",
    "save_global",
]

_NAME = re.compile(r"^global-r(\d{5,})-([0-9a-f]{10})\.json$")


def model_version(round_: int, arrays: Mapping[str, np.ndarray]) -> str:
    """``r<round>-<sha256[:10]>`` over the arrays (names, shapes, bytes) in a fixed order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k], np.float64)
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return f"r{int(round_):05d}-{h.hexdigest()[:10]}"


def save_global(model_dir: str | Path, round_: int, arrays: Mapping[str, np.ndarray], **meta: Any) -> str:
    """Write the aggregated arrays of a round atomically; return the version. Idempotent per version."""
    arrays = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    check_arrays(arrays)
    version = model_version(round_, arrays)
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    base = d / f"global-{version}"
    tmp = base.with_suffix(".npz.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, base.with_suffix(".npz"))
    info = {"version": version, "round": int(round_), "created": time.time(), **meta}
    tmpj = base.with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmpj, base.with_suffix(".json"))
    return version


def list_models(model_dir: str | Path) -> list[dict[str, Any]]:
    """Complete models in ``model_dir`` (meta dicts), oldest round first."""
    d = Path(model_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if _NAME.match(p.name) and p.with_suffix(".npz").exists():
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            info["path"] = str(p.with_suffix(".npz"))
            out.append(info)
    out.sort(key=lambda i: (int(i["round"]), float(i.get("created", 0))))
    return out


def is_current_format(arrays: Mapping[str, np.ndarray]) -> bool:
    """True if ``arrays`` are exactly the allow-listed names, shapes and dtypes of this version."""
    if set(arrays) != set(ALLOWED_ARRAYS):
        return False
    try:
        check_arrays(arrays)
    except ExportRefused:
        return False
    return True


def dp_releases(model_dir: str | Path) -> int:
    """DP classifier releases so far in ``model_dir`` (the budget accumulates over runs)."""
    return max((int((m.get("dp") or {}).get("releases", 0)) for m in list_models(model_dir)), default=0)


def latest_global(model_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The aggregated arrays and meta of the newest complete model, or None."""
    models = list_models(model_dir)
    if not models:
        return None
    info = models[-1]
    with np.load(info["path"], allow_pickle=False) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files if k in ALLOWED_ARRAYS}
    return arrays, info


def load_latest_model(model_dir: str | Path) -> tuple[dict[str, np.ndarray], str] | None:
    """The newest fleet prior as ``({"shape": [168, Q], "spread": [168, Q]}, version)`` (with
    ``centres``, ``centre_spread``, ``centre_weight`` [K, 168, Q] once the fleet has them) for
    :meth:`Detector.apply_prior`, or None when there is no model (or it holds no prior yet)."""
    g = latest_global(model_dir)
    if g is None:
        return None
    arrays, info = g
    if not is_current_format(arrays) or float(np.sum(arrays["prior.weight"])) <= 0:
        return None
    prior = finalise_prior(arrays["prior.shape_w"], arrays["prior.spread_w"], arrays["prior.weight"])
    if float(np.sum(arrays["prior.cweight"])) > 0:  # the K candidate shapes (Detector.apply_prior)
        prior |= finalise_centres(arrays["prior.cshape_w"], arrays["prior.cspread_w"], arrays["prior.cweight"])
    return prior, str(info["version"])


def load_latest_classifier(model_dir: str | Path) -> tuple[dict[str, np.ndarray], str] | None:
    """The newest fleet event classifier as ``({"coef": [C, F], "intercept": [C]}, version)``, or None."""
    g = latest_global(model_dir)
    if g is None:
        return None
    arrays, info = g
    if not is_current_format(arrays):
        return None  # written by a version with other features: not applicable to this code's events
    clf = global_classifier(arrays)
    if clf is None:
        return None
    return {"coef": clf[0], "intercept": clf[1]}, str(info["version"])
