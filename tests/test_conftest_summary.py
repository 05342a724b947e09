"""The test summary says how to run the SSH board tests when they were skipped for a missing sshd."""

from __future__ import annotations

from types import SimpleNamespace

from .conftest import pytest_terminal_summary
from .fixtures.sshboard import missing_reason


class _Reporter:
    def __init__(self, skipped):
        self.stats, self.lines = {"skipped": skipped}, []

    def write_line(self, line, **kw):
        self.lines.append(line)


def test_ssh_skips_get_a_how_to_line():
    why = "OpenSSH server not installed (apt-get install -y openssh-server; .ci/run does it)"
    rep = _Reporter([SimpleNamespace(longrepr=("f.py", 1, f"Skipped: {why}"))] * 6)
    pytest_terminal_summary(rep)
    assert rep.lines and rep.lines[0].startswith("6 SSH board test(s) skipped") and "apt-get install -y openssh-server" in rep.lines[0]
    quiet = _Reporter([SimpleNamespace(longrepr=("f.py", 1, "Skipped: no GPU"))])
    pytest_terminal_summary(quiet)
    assert quiet.lines == []
    assert missing_reason() is None or "openssh-server" in missing_reason() or "ssh" in missing_reason()
