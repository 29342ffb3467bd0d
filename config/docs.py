"""Render docs/configuration.md from the config models, so the reference never drifts from the code.

``python -m gridedge.config.docs > docs/configuration.md``; a test fails when the file is stale.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gridedge.config import models as c
from gridedge.config.units import format_duration, parse_duration, parse_size

__all__ = ["render"]

INTRO = """# Configuration reference

A site is one YAML file (by convention `/etc/gridedge/site.yaml`). Validate it before (re)starting:

```console
$ gridedge check-config /etc/gridedge/site.yaml
/etc/gridedge/site.yaml: ok: site demo-sub, 3 devices, 4 points, 3 groups
$ gridedge check-config broken.yaml
broken.yaml:6: devices[0].pol: unknown key (check the spelling; see docs/configuration.md)
broken.yaml:10: devices[0].points[3].register: Input should be less than or equal to 65535
```

Rules that hold everywhere:

- **Every problem is reported at once**, one line each, as `FILE:LINE: KEY.PATH: message`; exit code 2.
- **Unknown keys are errors**: a typo (`pol:` for `poll:`) must not be silently ignored. Duplicate keys too.
- **Durations** are strings: `500ms`, `1s`, `5min`, `2h`, `14d`, `1w` (bare numbers are seconds).
  **Sizes**: `500MB`, `512MiB`, `2GiB` (bare integers are bytes).
- **Secrets only by file reference** (`password_file`, `key_file`): an inline `password:` is rejected.
- **Read-only towards field devices**: no key enables a write or control request.
- `gridedge schema` prints the JSON schema of this file for editors (VS Code YAML extension:
  `# yaml-language-server: $schema=gridedge-schema.json`).
- `systemctl reload gridedge` re-reads the file; an invalid file is rejected with the same messages and the
  running configuration stays in force.

A complete example is `config/site.example.yaml`; the demo writes one for its substation at start-up.

## Key reference

Generated from the configuration models (`python -m gridedge.config.docs`).
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", c.SiteConfig),
    ("site", c.SiteSection),
    ("storage", c.StorageSection),
    ("storage.retention", c.RetentionSection),
    ("devices[] (common to every protocol)", c.DeviceBase),
    ("devices[] with protocol: modbus_tcp", c.ModbusTcpDevice),
    ("devices[] with protocol: modbus_rtu", c.ModbusRtuDevice),
    ("devices[].coalesce (Modbus)", c.CoalesceSection),
    ("devices[].workarounds (Modbus)", c.ModbusWorkarounds),
    ("devices[] with protocol: iec61850", c.Iec61850Device),
    ("devices[].reports[] (IEC 61850)", c.Iec61850Report),
    ("devices[] with protocol: iec104", c.Iec104Device),
    ("devices[].points[] (common to every protocol)", c.PointBase),
    ("devices[].points[] of Modbus devices", c.ModbusPoint),
    ("devices[].points[] of IEC 61850 devices", c.Iec61850Point),
    ("devices[].points[] of IEC 104 devices", c.Iec104Point),
    ("tls (mqtt.tls, devices[].tls)", c.TlsConfig),
    ("scoring", c.ScoringSection),
    ("scoring.suppress[]", c.SuppressionWindow),
    ("alerts", c.AlertsSection),
    ("mqtt", c.MqttSection),
    ("mqtt.sparkplug", c.SparkplugConfig),
    ("federation", c.FederationSection),
    ("metrics", c.MetricsSection),
    ("logging", c.LoggingSection),
]


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base = typing.get_args(ann)[0]
        meta = typing.get_args(ann)[1:]
        if any(getattr(m, "func", None) is parse_duration for m in meta):
            return "duration"
        if any(getattr(m, "func", None) is parse_size for m in meta):
            return "size"
        return _type_name(base)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(ann) if a is not type(None))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            ann.__name__, ann.__name__
        )
    return str(ann)


def _kind(field: Any) -> str | None:
    for m in field.metadata:
        if getattr(m, "func", None) is parse_duration:
            return "duration"
        if getattr(m, "func", None) is parse_size:
            return "size"
    return None


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    d = field.default
    if d is PydanticUndefined:
        d = field.default_factory() if field.default_factory else None
    if isinstance(d, BaseModel):
        return "(section)"
    if d is None:
        return "–"
    if _kind(field) == "duration":
        return f"`{format_duration(d)}`"
    if _kind(field) == "size" and d % 2**20 == 0:
        return f"`{d // 2**30}GiB`" if d % 2**30 == 0 else f"`{d // 2**20}MiB`"
    if isinstance(d, list | tuple) and not d:
        return "`[]`"
    return f"`{d}`"


def render() -> str:
    """The whole configuration.md text."""
    out = [INTRO]
    shown_common = {n for n in c.DeviceBase.model_fields} | {n for n in c.PointBase.model_fields}
    for title, model in SECTIONS:
        own = model.model_fields
        if model not in (c.DeviceBase, c.PointBase) and issubclass(model, c.DeviceBase | c.PointBase):
            own = {k: v for k, v in own.items() if k not in shown_common}
        out.append(f"\n### {title}\n")
        if model.__doc__ and model not in (c.SiteConfig,):
            out.append(model.__doc__.strip().splitlines()[0] + "\n")
        out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        for name, field in own.items():
            meaning = (field.description or "").replace("|", "\\|")
            out.append(
                f"| `{name}` | {_kind(field) or _type_name(field.annotation)} | {_default(field)} | {meaning} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
