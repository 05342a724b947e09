"""Real boards: the remote command cannot be shadowed by a folder named edgetransfer in the login
directory, host:port is parsed or refused at 'devices add', PEP 668 boards get the venv recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgetransfer.errors import InventoryError
from edgetransfer.remote.bench import BOOTSTRAP, PROBE_MARK, install_hint, probe_script
from edgetransfer.remote.inventory import DEFAULT_WORKDIR, Device, Inventory, parse_destination


def test_a_folder_named_edgetransfer_in_the_login_directory_does_not_shadow_the_package(tmp_path):
    (tmp_path / "edgetransfer").mkdir()  # what the old default workdir left in the home directory
    old = subprocess.run([sys.executable, "-m", "edgetransfer", "targets", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert old.returncode != 0 and "__version__" in old.stderr  # the trap: a namespace package shadows the install
    new = subprocess.run([sys.executable, "-c", BOOTSTRAP, "targets", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert new.returncode == 0, new.stderr[-1000:]
    assert "x86-cpu" in new.stdout
    probe = subprocess.run([sys.executable, "-c", probe_script()], cwd=tmp_path, capture_output=True, text=True)
    info = json.loads(next(ln for ln in probe.stdout.splitlines() if ln.startswith(PROBE_MARK))[len(PROBE_MARK):])
    assert info["edgetransfer"] and info["externally_managed"] is False  # a venv is never externally managed
    assert DEFAULT_WORKDIR != "edgetransfer" and "/" not in DEFAULT_WORKDIR


@pytest.mark.parametrize("spec, want", [
    ("me@10.0.0.42:2222", ("me", "10.0.0.42", 2222)),
    ("10.0.0.42", (None, "10.0.0.42", None)),
    ("board.local:22", (None, "board.local", 22)),
    ("me@[fe80::1]:2200", ("me", "fe80::1", 2200)),
    ("[fe80::1]", (None, "fe80::1", None)),
    ("fe80::1", (None, "fe80::1", None)),
])
def test_parse_destination(spec, want):
    assert parse_destination(spec) == want


@pytest.mark.parametrize("spec", ["h:0", "h:70000", "[fe80::1", "[fe80::1]x"])
def test_bad_destinations_are_refused(spec):
    with pytest.raises(InventoryError):
        parse_destination(spec)


def test_a_port_in_the_host_field_is_refused_naming_the_fix():
    with pytest.raises(InventoryError, match="carries a port"):
        Device("b", "10.0.0.42:2222")


def test_devices_add_with_host_port(tmp_path):
    from ..fixtures.cli import cli

    inv = tmp_path / "devices.yaml"
    assert cli(["devices", "add", "orin", "--host", "me@10.0.0.42:2222", "--inventory", str(inv)]) == 0
    d = Inventory.load(inv).get("orin")
    assert (d.user, d.host, d.port, d.workdir) == ("me", "10.0.0.42", 2222, DEFAULT_WORKDIR)
    assert cli(["devices", "add", "x", "--host", "h:2222", "--port", "2200", "--inventory", str(inv)]) == 2


def test_externally_managed_python_gets_the_venv_recipe():
    dev = Device("pi", "10.0.0.7")
    hint = install_hint(dev, {"externally_managed": True, "python": "/usr/bin/python3"})
    assert "python3 -m venv ~/et && ~/et/bin/pip install 'edgetransfer[device]==" in hint and "python: ~/et/bin/python" in hint
    assert "-m pip install" in install_hint(dev, {"externally_managed": False})
