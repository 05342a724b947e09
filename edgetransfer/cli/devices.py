"""``edgetransfer devices ...``: your own boards, reached over SSH (the inventory, a YAML file)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import present
from ..remote.inventory import DEFAULT_WORKDIR
from .options import INVENTORY, json_option

app = typer.Typer(no_args_is_help=True, help="Your own boards, reached over SSH: list, add, remove, check, trust.")


@app.command("list")
def devices_list(inventory: Optional[Path] = INVENTORY,
                 holders: bool = typer.Option(False, "--holders", help="connect to every board and show who holds its benchmark lock")):
    """The boards of the inventory, one table row each (on stdout); --holders: and who is using each."""
    from ..remote.inventory import Inventory

    inv = Inventory.load(inventory)
    held = None
    if holders and inv.devices:
        from ..remote.fleet import board_holders

        held = {h["device"]: h for h in board_holders(list(inv.devices.values()))}
    present.devices_table(inv, held)


@app.command("add")
def devices_add(
    name: str = typer.Argument(..., help="a short name, e.g. orin-desk"),
    host: str = typer.Option(..., "--host", help="[USER@]HOST of the board"),
    port: int = typer.Option(22, "--port"),
    user: Optional[str] = typer.Option(None, "--user", help="login (or give it as USER@HOST)"),
    target: Optional[str] = typer.Option(None, "--target", help="target profile of the board (default: the bundle's)"),
    workdir: str = typer.Option(DEFAULT_WORKDIR, "--workdir", help="directory on the board (relative = under the login's home)"),
    python: str = typer.Option("python3", "--python", help="the board's Python with edgetransfer[device] installed"),
    env: Optional[List[str]] = typer.Option(None, "--env", help="NAME=VALUE for the remote benchmark (repeat)"),
    docker_image: Optional[str] = typer.Option(None, "--docker-image", help="run the benchmark in this image (built from Dockerfile.jetson)"),
    docker_arg: Optional[List[str]] = typer.Option(None, "--docker-arg", help="extra 'docker run' argument (repeat), e.g. --docker-arg=--runtime=nvidia"),
    identity_file: Optional[str] = typer.Option(None, "--identity-file", help="private key for this board (else ssh-agent / ~/.ssh/id_*)"),
    known_hosts: Optional[str] = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)"),
    replace: bool = typer.Option(False, "--replace", help="overwrite an existing entry"),
    inventory: Optional[Path] = INVENTORY,
):
    """Add a board to the inventory (no connection is made; 'devices check NAME' tests it)."""
    from ..errors import InventoryError
    from ..remote.inventory import Device, Inventory, parse_destination
    from ..targets import load_target

    u, h, p = parse_destination(host)
    if u and user and u != user:
        raise InventoryError(f"--host says user {u!r} but --user says {user!r}; give the login once")
    if p is not None and port not in (22, p):
        raise InventoryError(f"--host says port {p} but --port says {port}; give the port once")
    port = p if p is not None else port
    envd = {}
    for e in env or []:
        k, sep, v = e.partition("=")
        if not sep:
            raise InventoryError(f"--env {e!r} must be NAME=VALUE")
        envd[k] = v
    if target:
        load_target(target)  # unknown target: error listing the known ones
    dev = Device(name=name, host=h, user=user or u, port=port, target=target, workdir=workdir, python=python, env=envd,
                 docker_image=docker_image, docker_args=tuple(docker_arg or ()), identity_file=identity_file, known_hosts=known_hosts)
    inv = Inventory.load(inventory)
    inv.add(dev, replace_existing=replace)
    inv.save()
    present.info(f"added {name} ({dev.destination}) to {inv.path}; test it with 'edgetransfer devices check {name}'")


@app.command("remove")
def devices_remove(name: str = typer.Argument(..., help="the board's name in the inventory"), inventory: Optional[Path] = INVENTORY):
    """Remove a board from the inventory (nothing on the board is touched)."""
    from ..remote.inventory import Inventory

    inv = Inventory.load(inventory)
    inv.remove(name)
    inv.save()
    present.info(f"removed {name} from {inv.path}")


@app.command("check")
def devices_check(
    name: str = typer.Argument(..., help="the board's name in the inventory"),
    inventory: Optional[Path] = INVENTORY,
    record: Optional[Path] = typer.Option(None, "--record", help="also save the board's raw state files here (test-fixture layout)"),
    as_json: bool = json_option("the board's facts"),
):
    """Connect and show what the board is (arch, OS, L4T/JetPack, Python, runtimes, disk, power state)."""
    from ..remote.bench import check_device
    from ..remote.inventory import Inventory

    dev = Inventory.load(inventory).get(name)
    res = check_device(dev)
    snap = res.pop("_snapshot")
    if record:
        snap.write_directory(record)
    if as_json:
        present.print_json(res)
        return
    present.device_check(name, dev, res)
    if res["version_error"]:
        raise SystemExit(2)


@app.command("setup")
def devices_setup(
    name: str = typer.Argument(..., help="the board's name in the inventory"),
    system_site_packages: bool = typer.Option(False, "--system-site-packages", help="let the venv see the board's system packages (JetPack's TensorRT, onnxruntime-gpu)"),
    no_deps: bool = typer.Option(False, "--no-deps", help="install the wheel alone (its dependencies come from the system)"),
    inventory: Optional[Path] = INVENTORY,
):
    """Build this edgetransfer's wheel, create a venv on the board and install it there with the
    [device] dependencies from the board's index; the inventory's python then points at it."""
    import dataclasses

    from ..remote.inventory import Inventory
    from ..remote.setup import setup_device

    inv = Inventory.load(inventory)
    dev = inv.get(name)
    res = setup_device(dev, system_site_packages=system_site_packages, no_deps=no_deps)
    inv.add(dataclasses.replace(dev, python=res["python"]), replace_existing=True)
    inv.save()
    present.info(f"{name}: edgetransfer {res['edgetransfer']} (Python {res['python_version']}) in {res['python']}; "
                 f"the inventory's python now points there")


@app.command("trust")
def devices_trust(
    name: str = typer.Argument(..., help="the board's name in the inventory"),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="the SHA256:... fingerprint you verified on the board (non-interactive)"),
    inventory: Optional[Path] = INVENTORY,
):
    """Accept a board's SSH host key deliberately: show its fingerprint, record it once confirmed."""
    import asyncio

    from ..errors import HostKeyError
    from ..remote.inventory import Inventory
    from ..remote.ssh import add_known_host, fetch_host_key, key_fingerprint

    dev = Inventory.load(inventory).get(name)
    key = asyncio.run(fetch_host_key(dev))
    fp = key_fingerprint(key)
    present.err.print(f"{name} ({dev.host}:{dev.port}) presents a {key.get_algorithm()} host key with fingerprint\n  {fp}\n"
                  "Compare it with the output of 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' (or the key type shown) run on the "
                  "board's own console.")
    if fingerprint is not None:
        if fingerprint.strip() != fp:
            raise HostKeyError(f"the board presents {fp}, not the fingerprint you gave ({fingerprint}); nothing was recorded")
    elif not sys.stdin.isatty() or not typer.confirm("Does it match, and do you trust this key?", default=False):
        raise HostKeyError("host key not accepted; nothing was recorded (non-interactive use: pass --fingerprint SHA256:...)")
    p = add_known_host(dev, key)
    present.err.print(f"recorded in {p}")
