"""Every ``gridedge`` command's ``--help`` says what it does and shows examples that actually parse."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest

from gridedge.gateway.cli.main import COMMANDS, build_parser, chosen_command, main

#: shell operators that end a command in an example (``a && b``, ``a | jq``, ``a > file``)
_SEPARATORS = {"&&", "||", "|", ";", "&"}
_REDIRECTS = {">", ">>", "<", "&>"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every sub-command below ``parser``, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _walk(sub, (*path, name))


def _example_lines(help_text: str) -> list[str]:
    """The example command lines of a help text (backslash continuations joined)."""
    lines: list[str] = []
    cont = False
    for line in help_text.splitlines():
        if cont:
            lines[-1] = lines[-1][:-1] + " " + line.strip()
        elif line.startswith("  gridedge "):
            lines.append(line.strip())
        else:
            continue
        cont = lines[-1].endswith("\\")
    return lines


def _gridedge_argvs(example: str) -> list[list[str]]:
    """Each ``gridedge ...`` command of an example line, as argv without the leading ``gridedge``."""
    example = re.sub(r"(?<=\s)\d(?=>)", "", example)  # "2> file": the fd number is not an argument
    lex = shlex.shlex(example, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    argvs: list[list[str]] = []
    cmd: list[str] = []
    skip_next = False
    for tok in [*tokens, ";"]:
        if skip_next:
            skip_next = False
        elif tok in _REDIRECTS:
            skip_next = True
        elif tok in _SEPARATORS:
            if cmd and cmd[0] == "gridedge":
                argvs.append(cmd[1:])
            cmd = []
        else:
            cmd.append(tok)
    return argvs


PARSER = build_parser()
COMMAND_PARSERS = list(_walk(PARSER))


def test_the_tree_has_every_command() -> None:
    paths = {" ".join(p) for p, _ in COMMAND_PARSERS}
    assert set(COMMANDS) <= paths
    assert {"discover iec61850", "federation status", "federation export-preview", "federation pull",
            "federation supernode"} <= paths  # fmt: skip


@pytest.mark.parametrize(("path", "parser"), COMMAND_PARSERS, ids=[" ".join(p) for p, _ in COMMAND_PARSERS])
def test_help_has_a_description_and_examples_that_parse(
    path: tuple[str, ...], parser: argparse.ArgumentParser
):
    text = parser.format_help()
    assert parser.description, f"gridedge {' '.join(path)}: no description"
    assert re.search(r"^examples:$", text, re.MULTILINE | re.IGNORECASE), text
    examples = _example_lines(text)
    assert examples, f"gridedge {' '.join(path)}: no line starting with '  gridedge '"
    own = [argv for ex in examples for argv in _gridedge_argvs(ex) if tuple(argv[: len(path)]) == path]
    assert own, f"gridedge {' '.join(path)}: no example of this command itself: {examples}"
    for example in examples:
        for argv in _gridedge_argvs(example):
            try:
                PARSER.parse_args(argv)
            except SystemExit as exc:  # argparse's error exit
                pytest.fail(f"example does not parse ({exc.code}): gridedge {shlex.join(argv)}")


@pytest.mark.parametrize("command", ["run", "check-config", "status", "replay", "discover", "federation"])
def test_descriptions_state_exit_codes(command: str) -> None:
    (_, parser), *_ = [(p, s) for p, s in COMMAND_PARSERS if p == (command,)]
    assert "exit code" in parser.description.lower(), parser.description


def test_the_example_parser_itself() -> None:
    assert _gridedge_argvs("gridedge a -x 'b c' > out.txt && gridedge d 10 2> err | jq .e  # note") == [
        ["a", "-x", "b c"],
        ["d", "10"],
    ]
    assert _example_lines("Examples:\n  gridedge a \\\n      --b c\n  gridedge d\nmore") == [
        "gridedge a  --b c",
        "gridedge d",
    ]


def test_only_the_chosen_command_is_loaded() -> None:
    """``gridedge --help`` imports no command module; ``check-config`` not the daemon or the detector."""
    code = (
        "import sys; from gridedge.gateway.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('gridedge.') or m in ('numba', 'matplotlib')))"
    )
    help_mods = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout.splitlines()[-1]  # fmt: skip
    assert "gridedge.gateway.cli.run" not in help_mods and "gridedge.gateway.cli.replay" not in help_mods
    check = subprocess.run([sys.executable, "-c", code, "check-config", "--help"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.splitlines()[-1]  # fmt: skip
    assert "gridedge.gateway.cli.check_config" in check
    for heavy in ("gridedge.gateway.runtime.daemon", "gridedge.scoring.detector", "numba", "matplotlib"):
        assert f"'{heavy}'" not in check, (heavy, check)


def test_chosen_command() -> None:
    assert chosen_command(["--help"]) is None
    assert chosen_command(["status", "--db", "x"]) == "status"
    assert chosen_command(["nope"]) is None


def test_an_unknown_command_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
