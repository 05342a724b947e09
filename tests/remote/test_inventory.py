"""Device inventory (devices.yaml) and the `edgetransfer devices add|list|remove` commands."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from edgetransfer.cli import app
from edgetransfer.errors import InventoryError
from edgetransfer.remote.inventory import Device, Inventory, default_inventory_path, parse_host


def test_add_list_remove_round_trip(tmp_path):
    inv_path = tmp_path / "cfg" / "devices.yaml"
    r = CliRunner().invoke(app, ["devices", "add", "orin-desk", "--host", "me@10.0.0.42", "--target", "x86-cpu", "--python", "/opt/venv/bin/python",
                                 "--env", "OMP_NUM_THREADS=6", "--inventory", str(inv_path)])
    assert r.exit_code == 0, r.output
    raw = yaml.safe_load(inv_path.read_text())
    assert raw == {"devices": {"orin-desk": {"host": "10.0.0.42", "user": "me", "target": "x86-cpu", "python": "/opt/venv/bin/python",
                                             "env": {"OMP_NUM_THREADS": "6"}}}}
    r = CliRunner().invoke(app, ["devices", "add", "pi5", "--host", "pi.local", "--port", "2222", "--docker-image", "et:latest",
                                 "--docker-arg=--runtime=nvidia", "--inventory", str(inv_path)])
    assert r.exit_code == 0, r.output
    inv = Inventory.load(inv_path)
    assert list(inv.devices) == ["orin-desk", "pi5"]
    pi = inv.get("pi5")
    assert (pi.host, pi.port, pi.user, pi.docker_image, pi.docker_args, pi.runs_in) == ("pi.local", 2222, None, "et:latest", ("--runtime=nvidia",), "docker et:latest")
    assert inv.get("orin-desk").destination == "me@10.0.0.42:22"
    r = CliRunner().invoke(app, ["devices", "list", "--inventory", str(inv_path)])
    assert r.exit_code == 0 and "orin-desk" in r.output and "pi.local:2222" in r.output
    # adding an existing name needs --replace
    with pytest.raises(InventoryError, match="--replace"):
        Inventory.load(inv_path).add(Device("pi5", "x"))
    r = CliRunner().invoke(app, ["devices", "remove", "pi5", "--inventory", str(inv_path)])
    assert r.exit_code == 0 and list(Inventory.load(inv_path).devices) == ["orin-desk"]
    with pytest.raises(InventoryError, match="no device 'pi5'.*devices add pi5"):
        Inventory.load(inv_path).get("pi5")


def test_passwords_and_bad_entries_are_refused(tmp_path):
    p = tmp_path / "devices.yaml"
    p.write_text("devices:\n  b:\n    host: 10.0.0.1\n    password: hunter2\n")
    with pytest.raises(InventoryError, match="never uses passwords.*ssh-copy-id"):
        Inventory.load(p)
    p.write_text("devices:\n  b:\n    host: 10.0.0.1\n    hostname: x\n")
    with pytest.raises(InventoryError, match=r"unknown keys \['hostname'\]"):
        Inventory.load(p)
    for kw, msg in [({"host": "-oProxyCommand=evil"}, "not a host name"), ({"host": "a b"}, "not a host name"),
                    ({"host": "h", "port": 0}, "outside 1..65535"), ({"host": "h", "env": {"A-B": "1"}}, "environment variable name"),
                    ({"host": "h", "user": "me;rm"}, "not a valid login")]:
        with pytest.raises(InventoryError, match=msg):
            Device("b", **kw)
    with pytest.raises(InventoryError, match="device name"):
        Device("../etc", "h")
    r = CliRunner().invoke(app, ["devices", "add", "x", "--host", "h", "--target", "no-such-target", "--inventory", str(tmp_path / "i.yaml")])
    assert r.exit_code != 0 and not (tmp_path / "i.yaml").exists()


def test_default_location_and_host_parsing(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGETRANSFER_DEVICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_inventory_path() == tmp_path / "edgetransfer" / "devices.yaml"
    monkeypatch.setenv("EDGETRANSFER_DEVICES", str(tmp_path / "x.yaml"))
    assert default_inventory_path() == tmp_path / "x.yaml"
    assert Inventory.load().devices == {}  # a missing file is an empty inventory
    assert parse_host("me@10.0.0.42") == ("me", "10.0.0.42") and parse_host("board") == (None, "board")
