"""Every python block of README.md and docs/*.md runs, and every ``deswm`` command they
show is one the real command line accepts, so the documentation cannot drift again.

Python blocks run in order, one namespace per document, in a folder holding the demo
(``deswm.toml``, its SQLite source and files, an archive). A block that cannot run here
says why on the line before it, as ``<!-- not-run: REASON -->``; the test shows the
reason as a skip. Shell commands (``sh``/``bash``/``console`` blocks) must parse whole;
commands quoted inline and the synopses of cli.md (``[--json]``, ``a|b``, ``FILE``) must
name a real command and only options it has.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from deswm._demo import run_demo
from deswm.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*\n\s*$", re.S)
SHELLS = {"sh", "bash", "console", "shell"}


def _blocks(language: set[str]) -> list[tuple[Path, int, str, str | None]]:
    """(document, line, code, not-run reason) of every block in ``language``."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) not in language:
                continue
            before = text[: match.start()]
            marker = NOT_RUN.search(before[-600:])
            line = before.count("\n") + 1
            found.append((doc, line, match.group(2), marker.group(1) if marker else None))
    return found


PYTHON = _blocks({"python"})


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict[str, Any]]:
    return {}


def _ids(blocks: list[tuple[Path, int, str, str | None]]) -> list[str]:
    return [f"{doc.relative_to(ROOT)}:{line}" for doc, line, _, _ in blocks]


def test_there_are_python_blocks_to_run() -> None:
    assert sum(reason is None for *_, reason in PYTHON) >= 5


@pytest.mark.parametrize(("doc", "line", "code", "reason"), PYTHON, ids=_ids(PYTHON))
def test_python_block_runs(
    doc: Path,
    line: int,
    code: str,
    reason: str | None,
    namespaces: dict[Path, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if reason is not None:
        assert len(reason) > 10, f"{doc.name}:{line}: say why the block does not run"
        pytest.skip(f"not run: {reason}")
    if doc not in namespaces:  # blocks of one document share a folder and a namespace
        folder = tmp_path_factory.mktemp(doc.stem)
        run_demo(folder, files=60, echo=lambda _: None)
        namespaces[doc] = {"__name__": f"docs_{doc.stem}", "__folder__": folder}
    namespace = namespaces[doc]
    monkeypatch.chdir(namespace["__folder__"])
    exec(compile(code, f"{doc.name}:{line}", "exec"), namespace)


# --- deswm commands ---------------------------------------------------------------------------

PARSER = build_parser()
PLACEHOLDERS = {
    "FILE": "deswm.toml",
    "SECONDS": "60",
    "UID": "file-1",
    "ISO": "2024-05-17T10:00:00Z",
    "DIR": "out",
    "OUT": "out.bin",
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMANDS = _subcommands(PARSER)


def _shell_commands() -> list[tuple[str, str]]:
    """(where, command) of every ``deswm`` line of the shell blocks."""
    found = []
    for doc, line, code, _ in _blocks(SHELLS):
        for offset, text in enumerate(code.splitlines()):
            text = text.strip().removeprefix("$ ")
            if text.startswith("deswm "):
                found.append((f"{doc.relative_to(ROOT)}:{line + 1 + offset}", text))
    return found


def _inline_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"`(deswm [^`]+)`", text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", " ".join(match.group(1).split())))
    return found


def _words(command: str) -> list[str]:
    """The arguments of ``command``: no comment, pipe or redirection, placeholders filled."""
    command = re.split(r"\s+#\s", command)[0]
    command = re.split(r"\s\\?\|\s|\s>\s", command)[0]
    words = shlex.split(command)[1:]
    return [PLACEHOLDERS.get(word, word) for word in words]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def _check_names(command: str) -> None:
    """The command and every option it names exist (for synopses and quoted fragments)."""
    words = shlex.split(re.split(r"\s+#\s", command)[0].replace("[", " ").replace("]", " "))[1:]
    named = [w for w in words if not w.startswith("-") and w in COMMANDS]
    parser = COMMANDS[named[0]] if named else PARSER
    if not named:
        first = next((w for w in words if not w.startswith("-")), None)
        assert first is None or first.isupper() or first == "...", f"unknown command {first!r}"
    for word in words:
        for option in word.split("|"):
            if option.startswith("-") and not re.fullmatch(r"-+|-[\d.]+", option):
                option = option.split("=")[0]
                assert option in _options(parser) | _options(PARSER), (
                    f"{option} is not an option of `deswm {named[0] if named else ''}`"
                )


SHELL = _shell_commands()
INLINE = _inline_commands()


def test_there_are_commands_to_check() -> None:
    assert len(SHELL) >= 8 and len(INLINE) >= 40


@pytest.mark.parametrize(("where", "command"), SHELL, ids=[w for w, _ in SHELL])
def test_shell_command_parses(where: str, command: str) -> None:
    _check_names(command)
    words = _words(command)
    if any("|" in w for w in words):  # `get|set|adjust`: each alternative
        index = next(i for i, w in enumerate(words) if "|" in w)
        variants = [
            [*words[:index], choice, *words[index + 1 :]] for choice in words[index].split("|")
        ]
    else:
        variants = [words]
    for args in variants:
        try:
            PARSER.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: `deswm {' '.join(args)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize(("where", "command"), INLINE, ids=[w for w, _ in INLINE])
def test_quoted_command_names_real_options(where: str, command: str) -> None:
    _check_names(command)


COMMON = {
    "-h",
    "--help",
    "-v",
    "--verbose",
    "-q",
    "--quiet",
    "-c",
    "--config",
    "--debug",
    "--log-format",
}
"""Options every command takes, described once at the top of cli.md."""


def _sections() -> dict[str, str]:
    """cli.md's text under each ``## `deswm NAME ...``` heading, by NAME, after the
    introduction (which describes the options several commands share)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `deswm (\w+)", text, flags=re.M)
    return {parts[i]: parts[0] + parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_md_describes_every_option(name: str) -> None:
    section = _sections().get(name)
    assert section is not None, f"docs/cli.md has no section for `deswm {name}`"
    for action in COMMANDS[name]._actions:
        names = set(action.option_strings) - COMMON
        if names and not any(
            re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", section) for n in names
        ):
            pytest.fail(f"docs/cli.md does not describe `deswm {name} {'/'.join(sorted(names))}`")
