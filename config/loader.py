"""Site configuration: YAML written by field engineers → a validated :class:`~gridedge.config.models.SiteConfig`.

Every error names the file, the line and the key path (``site.yaml:14: devices[0].points[3].register:
...``), all errors at once; checks across sections (:func:`cross_check`) run after the models validate.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from gridedge.config.models import SiteConfig
from gridedge.gateway.model import Point, PointTable

__all__ = ["ConfigError", "build_point_table", "cross_check", "load_config", "validate_text"]

def cross_check(cfg: SiteConfig) -> list[tuple[tuple[Any, ...], str]]:
    """Checks across sections that a single model cannot see: (key path, message) per problem."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen_dev: dict[str, int] = {}
    seen_pt: dict[str, str] = {}
    groups = {p.group for d in cfg.devices for p in d.points}
    for i, d in enumerate(cfg.devices):
        if d.name in seen_dev:
            problems.append(
                (
                    ("devices", i, "name"),
                    f"device name {d.name!r} is already used by devices[{seen_dev[d.name]}]",
                )
            )
        seen_dev.setdefault(d.name, i)
        for j, p in enumerate(d.points):
            if p.name in seen_pt:
                problems.append(
                    (
                        ("devices", i, "points", j, "name"),
                        f"point name {p.name!r} is already used by device {seen_pt[p.name]!r}",
                    )
                )
            seen_pt.setdefault(p.name, d.name)
            if p.parent is not None and p.parent not in groups:
                problems.append(
                    (
                        ("devices", i, "points", j, "parent"),
                        f"parent {p.parent!r} is not the group of any point",
                    )
                )
    return problems


# --------------------------------------------------------------------------------------------------
# Loading with file:line:key errors
# --------------------------------------------------------------------------------------------------
class ConfigError(Exception):
    """Invalid configuration; ``errors`` holds one ``FILE:LINE: KEY.PATH: message`` line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _line_index(
    node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int], dup: list[str], fname: str
) -> None:
    """Map every key path in the YAML document to its 1-based line; report duplicate keys."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for knode, vnode in node.value:
            key = knode.value
            if key in seen:
                dup.append(f"{fname}:{knode.start_mark.line + 1}: {_fmt_path((*path, key))}: duplicate key")
            seen.add(key)
            out[(*path, key)] = knode.start_mark.line + 1
            _line_index(vnode, (*path, key), out, dup, fname)
            out[(*path, key)] = knode.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out, dup, fname)


def _fmt_path(path: tuple[Any, ...]) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "(top)"


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union tags (e.g. 'modbus_tcp') that are not keys of the document."""
    path: list[Any] = []
    cur = data
    for part in loc:
        if (isinstance(cur, dict) and part in cur) or (
            isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        ):
            cur = cur[part]
            path.append(part)
        elif (
            isinstance(cur, dict)
            and not isinstance(part, int)
            and part not in cur
            and part in _all_field_names()
        ):
            path.append(part)  # a missing required key: report it at its parent's line
            break
    return tuple(path)


_FIELD_NAMES: set[str] | None = None


def _all_field_names() -> set[str]:
    global _FIELD_NAMES
    if _FIELD_NAMES is None:
        names: set[str] = set()
        stack: list[type[BaseModel]] = [SiteConfig]
        seen: set[type] = set()
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            for fname, f in m.model_fields.items():
                names.add(fname)
                for t in _model_types(f.annotation):
                    stack.append(t)
        _FIELD_NAMES = names
    return _FIELD_NAMES


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for a in getattr(annotation, "__args__", ()) or ():
        out.extend(_model_types(a))
    meta = getattr(annotation, "__metadata__", None)
    if meta is not None:
        out.extend(_model_types(annotation.__origin__))
    return out


def validate_text(text: str, fname: str) -> SiteConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` with every problem found."""
    return _packed(_validate_text(text, fname))


def _packed(cfg: SiteConfig) -> SiteConfig:
    """The same config, re-built once the YAML tree and the line index are freed.

    Validation allocates the models in between the parser's objects; when those are freed the models
    stay scattered over memory arenas the allocator cannot return. A pickle round trip after that packs
    them: at 10,000 points the daemon keeps 22 MiB instead of 71 MiB (docs/benchmarks.md).
    """
    try:
        blob = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a model that cannot be pickled: keep it as it is
        return cfg
    del cfg
    return pickle.loads(blob)


def _validate_text(text: str, fname: str) -> SiteConfig:
    try:
        # libyaml's C loader when present: a 10k-point site loads in about a second instead of twenty.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{fname}:{line}: (yaml): {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{fname}:1: (yaml): {exc}"]) from exc
    if node is None or data is None:
        raise ConfigError([f"{fname}:1: (top): the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{fname}:{node.start_mark.line + 1}: (top): expected a mapping of sections (site:, devices:, ...)"
            ]
        )
    lines: dict[tuple[Any, ...], int] = {}
    dups: list[str] = []
    _line_index(node, (), lines, dups, fname)
    errors = list(dups)
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            path = _data_path(tuple(err["loc"]), data)
            if err["type"] == "union_tag_invalid":
                path = (*path, "protocol")
            line = lines.get(path)
            probe = path
            while line is None and probe:
                probe = probe[:-1]
                line = lines.get(probe)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/configuration.md)"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            elif err["type"] == "missing":
                msg = "required key is missing"
            errors.append(f"{fname}:{line or 1}: {_fmt_path(path)}: {msg}")
        raise ConfigError(errors) from exc
    for path, msg in cross_check(cfg):
        errors.append(f"{fname}:{lines.get(path, 1)}: {_fmt_path(path)}: {msg}")
    if errors:
        raise ConfigError(errors)
    return cfg


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate a site file. Raises :class:`ConfigError` (all problems, file:line:key each)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}:0: (file): cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}:0: (file): not UTF-8 text: {exc}"]) from exc
    return validate_text(text, str(p))


def build_point_table(cfg: SiteConfig) -> PointTable:
    """Dense point indices in configuration order (devices, then their points)."""
    pts: list[Point] = []
    for d in cfg.devices:
        for p in d.points:
            pts.append(
                Point(
                    index=len(pts),
                    name=p.name,
                    quantity=p.quantity,
                    unit=p.unit,
                    group=p.group,
                    device=d.name,
                    parent=p.parent,
                    nominal=p.nominal,
                    rating=p.rating,
                    weight=p.weight,
                )
            )
    return PointTable(pts)
