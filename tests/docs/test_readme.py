"""The README against the tool: every ``edgetransfer ...`` command and ``--option`` it shows exists
in the CLI (read from the Typer app with click introspection), and the extras it names exist in
pyproject.toml, with the venv's extras matching the Makefile's."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import typer

from edgetransfer.cli import app

from ..fixtures import REPO

README = (REPO / "README.md").read_text()
ROOT = typer.main.get_command(app)
# options of other programs the README shows in inline code, and whose they are
FOREIGN_OPTIONS = {"--runtime": "docker run's (a docker_args entry)", "--cpus": "docker run's (CPU quota)",
                   "--cpuset-cpus": "docker run's (CPU affinity)"}
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _blocks(text: str) -> list[str]:
    """The README's fenced code blocks that may hold shell commands (no language, bash, sh, console)."""
    blocks, lang, cur = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if cur is None:
                lang, cur = line[3:].strip(), []
            else:
                if lang in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(cur))
                cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def _commands(text: str) -> list[str]:
    """``edgetransfer ...`` command lines of the README (code blocks and inline code), with line
    continuations (a trailing backslash, or a next line starting with ``[``/``--``) joined and
    comments dropped."""
    out = []
    for block in _blocks(text):
        lines: list[str] = []
        for raw in block.splitlines():
            line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
            cont = bool(lines) and lines[-1].endswith("\\")
            if cont or (lines and line.lstrip().startswith(("[", "--"))):
                lines[-1] = lines[-1].rstrip("\\") + " " + line.strip()
            elif line.strip():
                lines.append(line.strip())
        out += [ln.rstrip("\\") for ln in lines]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += re.findall(r"`((?:\S+ )?-m edgetransfer [^`]+|edgetransfer [^`]+)`", prose)
    return [c for c in out if re.match(r"(\$ )?(edgetransfer |(\S+ )*-m edgetransfer )", c)]


def _resolve(line: str):
    """(click command, the tokens after its name) for an edgetransfer command line."""
    line = line.lstrip("$ ")
    toks = shlex.split(line.replace("[", " ").replace("]", " ").replace(" | ", " "))
    toks = toks[toks.index("edgetransfer") + 1:]
    cmd, path = ROOT, ["edgetransfer"]
    while toks and hasattr(cmd, "commands") and toks[0] in cmd.commands:
        cmd = cmd.commands[toks[0]]
        path.append(toks.pop(0))
    return cmd, " ".join(path), toks


def _opts(cmd) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        names |= set(getattr(p, "opts", ())) | set(getattr(p, "secondary_opts", ()))
    return names


def _all_commands(cmd=ROOT):
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _all_commands(sub)


COMMANDS = _commands(README)


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 25
    shown = {_resolve(c)[1] for c in COMMANDS}
    # every stage and check, and the targets and devices groups, are documented
    for name in ("run", "train", "export", "quantize", "build", "benchmark", "selftest", "compare",
                 "targets list", "devices add", "devices check", "devices trust"):
        assert f"edgetransfer {name}" in shown, name


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_exists_with_its_options(line):
    cmd, path, rest = _resolve(line)
    assert not hasattr(cmd, "commands") or not rest or not rest[0].isidentifier() or rest[0].startswith("-"), \
        f"{line!r}: '{path} {rest[0]}' is no command"
    assert cmd is not ROOT, f"{line!r} names no edgetransfer command"
    missing = [o for o in OPTION.findall(" ".join(rest)) if o not in _opts(cmd)]
    assert not missing, f"{line!r}: {path} has no option {missing}"


def test_every_option_the_readme_names_exists():
    known = set().union(*(_opts(c) for c in _all_commands()))
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    foreign = ("./build.sh", "torchrun", "python", "pip", "make", "ssh", "trtexec", "nvpmodel", "vcgencmd")
    named = {o for s in spans if not s.startswith(foreign) for o in OPTION.findall(s)}
    assert len(named) >= 40
    unknown = sorted(named - known - set(FOREIGN_OPTIONS))
    assert not unknown, f"the README names options no command has: {unknown}"


def test_extras_match_pyproject_and_the_makefile():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for group in re.findall(r"edgetransfer\[([a-z0-9,-]+)\]|'\.\[([a-z0-9,-]+)\]'|`\[([a-z0-9-]+)\]`", README):
        for g in group:
            named |= set(filter(None, g.split(",")))
    assert {"train", "export", "device", "remote", "mobile", "openvino", "plot"} <= named
    assert not sorted(named - extras), f"the README names extras pyproject.toml lacks: {sorted(named - extras)}"
    make = (REPO / "Makefile").read_text()
    venv = re.search(r"^EXTRAS \?= (\S+)", make, flags=re.M).group(1)
    assert set(venv.split(",")) <= extras
    # the set-up section says what `make` installs
    assert f"pip install -e '.[{venv}]'" in README, f"README's set-up section must name the Makefile's extras [{venv}]"


def test_makefile_commands_exist():
    make = (REPO / "Makefile").read_text()
    lines = re.findall(r"\$\(VENV\)/bin/(edgetransfer [^;\n]+)", make)  # up to a shell ";"
    assert lines
    for line in lines:
        test_readme_command_exists_with_its_options(line)
