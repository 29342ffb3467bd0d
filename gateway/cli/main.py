"""The one console script, ``gridedge``. Sub-commands are the contracts other tools script against."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_INVALID = 2


def _cmd_run(args: argparse.Namespace) -> int:
    from gridedge.config.models import ConfigError, load_config
    from gridedge.gateway.logs import setup_logging
    from gridedge.gateway.runtime.daemon import Runtime
    from gridedge.gateway.runtime.malloc_tuning import pin_mmap_threshold

    pin_mmap_threshold()  # before the big allocations: keeps numpy temporaries off the fragmenting heap
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    setup_logging(args.log_level or cfg.logging.level)
    # a watchdog kill (SIGABRT) or a fatal signal then leaves every thread's stack in the journal
    faulthandler.enable(all_threads=True)
    runtime = Runtime(cfg, config_path=Path(args.config))
    # once the scoring kernels are loaded, LLVM's ≈ 68 MiB of code pages are idle: let the kernel take them
    runtime.page_out_compiler = True
    asyncio.run(runtime.run())
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    from gridedge.config.models import ConfigError, build_point_table, load_config

    status = EXIT_OK
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)
            status = EXIT_INVALID
            continue
        pts = build_point_table(cfg)
        if not args.quiet:
            print(
                f"{path}: ok: site {cfg.site.name}, {len(cfg.devices)} devices, {len(pts)} points, {len(pts.groups)} groups"
            )
    return status


def _cmd_schema(args: argparse.Namespace) -> int:
    from gridedge.config.models import SiteConfig

    schema = SiteConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gridedge site configuration"
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from gridedge.gateway.store.writer import read_status

    if args.config:
        from gridedge.config.models import ConfigError, load_config

        try:
            db = load_config(args.config).storage.path
        except ConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)
            return EXIT_INVALID
    else:
        db = args.db
    if not Path(db).exists():
        print(f"gridedge status: no database at {db}", file=sys.stderr)
        return EXIT_INVALID
    status = read_status(db)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        from gridedge.gateway.cli.status_view import render_status

        render_status(status, db)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from gridedge.gateway.cli.demo import run_demo

    return run_demo(
        duration=args.duration, db=args.db, seed=args.seed, warm_days=args.warm_days, mqtt=not args.no_mqtt
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gridedge",
        description="Substation edge gateway: polls Modbus / IEC 61850 / IEC 104 devices, scores anomalies "
        "locally, buffers everything in SQLite and serves local operators over MQTT.",
        epilog="Documentation: docs/ (configuration.md, protocols/, scoring.md, mqtt.md, operations.md).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)",
                       description="Run the gateway until SIGTERM (clean flush, exit 0). SIGHUP re-reads and "
                       "validates the config; an invalid one is rejected and the running one kept.")  # fmt: skip
    r.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="site configuration file")
    r.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level"
    )
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check-config", help="validate site files without starting (exit 2 if invalid)",
                       description="Validate site files. Errors print as FILE:LINE: KEY.PATH: message, one per line.")  # fmt: skip
    c.add_argument("files", nargs="+", metavar="SITE.yaml")
    c.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    c.set_defaults(func=_cmd_check_config)

    s = sub.add_parser("schema", help="print the JSON schema of the site configuration (for editors)")
    s.set_defaults(func=_cmd_schema)

    d = sub.add_parser("demo", help="run the demo substation end to end",
                       description="Start real Modbus, IEC 61850 and IEC 104 servers fed by a substation model, warm "
                       "the detector on weeks of simulated history, run the gateway against them, inject grid "
                       "incidents and sensor faults, and print a summary.")  # fmt: skip
    d.add_argument(
        "--duration", type=float, default=75.0, metavar="S", help="seconds of live demo (default 75)"
    )
    d.add_argument("--db", default=None, metavar="PATH", help="SQLite file (default: a fresh temporary file)")
    d.add_argument("--seed", type=int, default=7, help="substation model seed")
    d.add_argument(
        "--warm-days", type=float, default=28.0, help="days of simulated history to warm the baselines"
    )
    d.add_argument("--no-mqtt", action="store_true", help="do not start a local mosquitto even if installed")
    d.set_defaults(func=_cmd_demo)

    st = sub.add_parser("status", help="what the store holds (read-only)")
    g = st.add_mutually_exclusive_group(required=True)
    g.add_argument("--db", metavar="PATH", help="SQLite file")
    g.add_argument("-c", "--config", metavar="SITE.yaml", help="take the database path from a site file")
    st.add_argument("--json", action="store_true", help="one JSON object (the contract for scripts)")
    st.set_defaults(func=_cmd_status)

    from gridedge.gateway.cli import export, plot

    ex = sub.add_parser("export", help="readings out of the store as CSV (replayable) or Parquet (read-only)")
    export.add_arguments(ex)
    ex.set_defaults(func=export.run)
    pl = sub.add_parser("plot", help="PNG of an alert's points around the alert, from the store (read-only)")
    plot.add_arguments(pl)
    pl.set_defaults(func=plot.run)

    try:
        from gridedge.gateway.cli.replay import add_replay_arguments, replay_command

        rp = sub.add_parser("replay", help="offline scoring of a readings CSV through the live detector",
                            description="Score READINGS.csv (timestamp,point,value[,quality]) with the same Detector "
                            "and alert policy as the daemon and write ALERTS.csv.")  # fmt: skip
        add_replay_arguments(rp)
        rp.set_defaults(func=replay_command)
    except ImportError:  # pragma: no cover - during bootstrap only
        pass

    try:
        from gridedge.protocols.iec61850 import add_discover_arguments, discover_command

        ds = sub.add_parser("discover", help="browse a device and print a YAML points snippet")
        dsub = ds.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
        d61850 = dsub.add_parser("iec61850", help="list logical devices, nodes, datasets and report control blocks",
                                 description="Browse an IEC 61850 server (read-only MMS services) and print a YAML "
                                 "points snippet a field engineer can paste into the site file.")  # fmt: skip
        add_discover_arguments(d61850)
        d61850.set_defaults(func=discover_command)
    except ImportError:  # pragma: no cover
        pass

    try:
        from gridedge.federation.cli import add_federation_arguments

        fe = sub.add_parser("federation", help="federated learning: status, export-preview, pull, supernode")
        add_federation_arguments(fe)
    except ImportError:  # pragma: no cover
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
