"""Taking a board's raw state: :func:`snapshot_script` (run on the board over SSH) prints the
files and command outputs that :mod:`edgetransfer.remote.boardstate` parses; :func:`parse_snapshot`
reads that output back into a :class:`BoardSnapshot`, which can also be saved to and read from a
directory laid out like the board's file system (the recorded boards under ``tests/fixtures/boards/``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

MARK = "@@edgetransfer:"
COMMANDS_DIR = "_commands"

# Files read on the board (shell globs). Every one is optional.
SNAPSHOT_FILES = (
    "/etc/nv_tegra_release",
    "/etc/os-release",
    "/proc/device-tree/model",
    "/etc/nvpmodel.conf",
    "/var/lib/nvpmodel/status",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_min_freq",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_max_freq",
    "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq",
    "/sys/class/thermal/thermal_zone[0-9]*/type",
    "/sys/class/thermal/thermal_zone[0-9]*/temp",
    "/sys/class/thermal/thermal_zone[0-9]*/trip_point_[0-9]*_temp",
    "/sys/class/thermal/thermal_zone[0-9]*/trip_point_[0-9]*_type",
    "/sys/class/devfreq/*/cur_freq",
    "/sys/class/devfreq/*/min_freq",
    "/sys/class/devfreq/*/max_freq",
)
# Commands run on the board when present (fixed strings; output capped at 64 KiB).
SNAPSHOT_COMMANDS = ("uname -m", "uname -sr", "nvpmodel -q", "vcgencmd get_throttled")



def snapshot_script(workdir: str | None = None) -> str:
    """The ``sh`` script that prints a :class:`BoardSnapshot` (parse it with :func:`parse_snapshot`).

    Only ``workdir`` (for the free-disk figure) comes from the inventory, passed through
    :func:`shlex.quote`."""
    files = " ".join(SNAPSHOT_FILES)
    cmds = " ".join(shlex.quote(c) for c in SNAPSHOT_COMMANDS)
    wd = shlex.quote(workdir or ".")
    return (
        "PATH=\"$PATH:/usr/sbin:/sbin:/opt/vc/bin\"; export LC_ALL=C\n"
        f"for f in {files}; do\n"
        f"  if [ -f \"$f\" ] && [ -r \"$f\" ]; then printf '{MARK}file:%s\\n' \"$f\"; tr -d '\\000' < \"$f\" 2>/dev/null; echo; fi\n"
        "done\n"
        f"for c in {cmds}; do\n"
        "  set -- $c\n"
        f"  if command -v \"$1\" >/dev/null 2>&1; then printf '{MARK}cmd:%s\\n' \"$c\"; $c 2>&1 | head -c 65536; echo; fi\n"
        "done\n"
        f"d={wd}; [ -d \"$d\" ] || d=.\n"
        f"printf '{MARK}cmd:df\\n'; df -Pk -- \"$d\" 2>&1 | head -c 4096\n"
        f"printf '{MARK}end\\n'\n"
    )


@dataclass
class BoardSnapshot:
    """Raw board facts: ``files`` maps an absolute path to its text, ``commands`` a command line
    (one of :data:`SNAPSHOT_COMMANDS`, or ``df``) to its output."""

    files: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_directory(cls, root: str | Path) -> "BoardSnapshot":
        """Read a recorded board: ``root/etc/nv_tegra_release`` is ``/etc/nv_tegra_release``;
        ``root/_commands/nvpmodel+-q.txt`` is the output of ``nvpmodel -q`` (spaces as ``+``)."""
        root = Path(root)
        snap = cls()
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(root)
            text = p.read_bytes().replace(b"\0", b"").decode("utf-8", "replace")
            if rel.parts[0] == COMMANDS_DIR:
                snap.commands[p.stem.replace("+", " ")] = text
            else:
                snap.files["/" + rel.as_posix()] = text
        return snap

    def write_directory(self, root: str | Path) -> Path:
        """Record this snapshot in the layout :meth:`from_directory` reads (for fixtures)."""
        root = Path(root)
        for path, text in self.files.items():
            p = root / path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        for cmd, text in self.commands.items():
            p = root / COMMANDS_DIR / (cmd.replace(" ", "+") + ".txt")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return root


def parse_snapshot(output: str) -> BoardSnapshot:
    """Parse what :func:`snapshot_script` printed (text before the first marker is ignored,
    e.g. a login banner)."""
    snap = BoardSnapshot()
    current: tuple[str, str] | None = None
    buf: list[str] = []

    def flush() -> None:
        if current is not None:
            text = "\n".join(buf)
            (snap.files if current[0] == "file" else snap.commands)[current[1]] = text.rstrip("\n") + "\n" if text.strip() else ""

    for line in output.splitlines():
        if line.startswith(MARK):
            flush()
            kind, _, name = line[len(MARK):].partition(":")
            current, buf = ((kind, name) if kind in ("file", "cmd") else None), []
        elif current is not None:
            buf.append(line)
    flush()
    return snap
