"""The layering of docs/architecture.md, checked on the source: which package may import which.

Parses every module of the installed packages (no import is executed) and fails on an import the table
below does not allow, on an ``assert`` in library code (stripped by ``python -O``, so never a guard), and
on ``hasattr`` capability probes. The runtime's seams (store, publisher, driver) are protocols; the concrete
classes must keep satisfying them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gridedge.gateway.mqtt.client import MqttBridge
from gridedge.gateway.runtime.ports import EventPublisher, GatewayStore
from gridedge.gateway.store.writer import Store

ROOT = Path(__file__).resolve().parents[1]
#: repository folder → import name (pyproject's package-dir)
FOLDERS = {
    "gateway": "gridedge.gateway",
    "config": "gridedge.config",
    "protocols": "gridedge.protocols",
    "scoring": "gridedge.scoring",
    "federation": "gridedge.federation",
}

MODEL, LOGS = "gridedge.gateway.model", "gridedge.gateway.logs"
CALENDAR = "gridedge.gateway.calendar"  # public holidays: the config validates them, the slot clock uses them
LEAVES = {MODEL, LOGS, CALENDAR}
READINGS_CSV = "gridedge.gateway.readings_csv"  # replay's numba CSV scanner; precompile warms it at install
#: package (longest prefix wins) → the project packages it may import besides itself.
ALLOWED: dict[str, set[str]] = {
    MODEL: set(),  # the shared data types import nothing of the project
    LOGS: set(),  # the log-line format, shared by the daemon and its worker processes
    CALENDAR: set(),
    READINGS_CSV: {MODEL},
    "gridedge.config": {MODEL, CALENDAR},
    "gridedge.scoring": {MODEL, CALENDAR},  # pure computation: no I/O, no store, no config models
    "gridedge.protocols": LEAVES | {"gridedge.config"},  # a driver is built from its device's config section
    "gridedge.protocols.simulators": {MODEL, "gridedge.protocols.modbus_codec"},
    "gridedge.gateway.store": LEAVES,
    "gridedge.gateway.mqtt": LEAVES
    | {"gridedge.config", "gridedge.gateway.store"},  # the outbox shares the file
    "gridedge.federation": LEAVES | {"gridedge.config", "gridedge.scoring", "gridedge.gateway.store"},
    "gridedge.gateway.runtime": LEAVES
    | {
        "gridedge.config",
        "gridedge.gateway.store",
        "gridedge.gateway.mqtt",
        "gridedge.protocols",
        "gridedge.scoring",
        "gridedge.federation.classifier",
        "gridedge.federation.models",
        READINGS_CSV,
    },
    "gridedge.gateway.cli": {"gridedge"},  # the composition root for commands may use anything
}
#: C extensions that may only be loaded inside the worker processes that isolate them from the daemon.
ISOLATED = {
    "c104": {"gridedge.protocols.iec104_session", "gridedge.protocols.simulators.iec104_server"},
    "pyiec61850": {
        "gridedge.protocols.iec61850_session",
        "gridedge.protocols.iec61850_discover",
        "gridedge.protocols.simulators.iec61850_server",
    },
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, dotted in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join((dotted, *parts)), f))
    return out


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def _package_of(module: str, table: dict[str, set[str]]) -> str | None:
    best = None
    for pkg in table:
        if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best)):
            best = pkg
    return best


def _within(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


MODULES = _modules()


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [m for m, _ in MODULES if _package_of(m, ALLOWED) is None and m != "gridedge.gateway"]
    assert orphans == [], f"add these to ALLOWED in {__file__} and to docs/architecture.md: {orphans}"


def test_no_forbidden_import() -> None:
    bad = []
    for module, path in MODULES:
        pkg = _package_of(module, ALLOWED)
        if pkg is None:
            continue
        for line, target in _imports(ast.parse(path.read_text(), str(path))):
            if not target.startswith("gridedge."):
                continue
            if _package_of(target, ALLOWED) == pkg or _within(target, ALLOWED[pkg]):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {module} ({pkg}) imports {target}")
    assert bad == [], "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_crashy_c_extensions_stay_in_their_worker_processes() -> None:
    bad = []
    for module, path in MODULES:
        for line, target in _imports(ast.parse(path.read_text(), str(path))):
            top = target.split(".")[0]
            if top in ISOLATED and module not in ISOLATED[top]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {top}")
    assert bad == [], "\n".join(bad)


def test_no_assert_or_hasattr_probe_in_library_code() -> None:
    bad = []
    for _module, path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: assert (stripped by -O; raise instead)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: hasattr probe (use a protocol)")
    assert bad == [], "\n".join(bad)


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    """The AST walk sees a forbidden import and an assert where there is one."""
    tree = ast.parse("from gridedge.gateway.runtime.daemon import Runtime\nassert 1\n")
    assert _imports(tree) == [(1, "gridedge.gateway.runtime.daemon")]
    assert not _within("gridedge.gateway.runtime.daemon", ALLOWED["gridedge.scoring"])
    assert any(isinstance(n, ast.Assert) for n in ast.walk(tree))


@pytest.mark.parametrize(("cls", "proto"), [(Store, GatewayStore), (MqttBridge, EventPublisher)])
def test_concrete_classes_keep_their_protocol(cls: type, proto: type) -> None:
    members = [m for m in vars(proto) if not m.startswith("_") and callable(getattr(proto, m))]
    assert members, proto
    missing = [m for m in members if not callable(getattr(cls, m, None))]
    assert missing == [], f"{cls.__name__} no longer offers {missing} of {proto.__name__}"
