"""``gridedge schema``: the JSON schema of the site configuration (for editors and CI linters)."""

from __future__ import annotations

import argparse
import json

from gridedge.config.models import SiteConfig

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run", "site_schema"]

EXIT_OK = 0

DESCRIPTION = """\
Print the JSON schema (draft 2020-12) of the site configuration on stdout, generated from the same
models `check-config` validates with. Point an editor's YAML language server at it for completion and
inline errors while writing a site file.

Exit code: 0."""

EPILOG = """\
Examples:
  gridedge schema > gridedge-site.schema.json
  gridedge schema | python3 -m json.tool --compact > /dev/null
  gridedge schema | jq '.properties | keys'"""


def site_schema() -> dict:
    """The site configuration's JSON schema, with ``$schema`` and ``title`` set."""
    schema = SiteConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gridedge site configuration"
    return schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``schema`` has no options; this sets its help texts."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    """CLI entry: print the schema; 0."""
    print(json.dumps(site_schema(), indent=2))
    return EXIT_OK
