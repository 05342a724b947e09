"""A stand-in board for the remote tests: Debian's OpenSSH ``sshd`` on a loopback port with a
temporary host key, a temporary user key, authorized_keys and known_hosts; and a TCP proxy that
breaks the connection after a given number of bytes (a killed link mid-transfer).

Only 127.0.0.1 is used; every wait is bounded; :meth:`LoopbackBoard.stop` / :meth:`CutProxy.close`
end what was started (the tests call them at teardown).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSH_KEYGEN = shutil.which("ssh-keygen")


def missing_reason() -> str | None:
    if SSHD is None:
        return "OpenSSH server not installed (apt-get install -y openssh-server; .ci/run does it)"
    if SSH_KEYGEN is None:
        return "ssh-keygen not installed (apt-get install -y openssh-client)"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return "asyncssh not installed: pip install 'edgetransfer[remote]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "edgetransfer-test", "-f", str(path)], check=True)
    return path


def public_key(path: Path) -> str:
    """``ssh-ed25519 AAAA...`` (type and base64, no comment) of ``path`` (a private key)."""
    return " ".join(Path(str(path) + ".pub").read_text().split()[:2])


class LoopbackBoard:
    """``sshd -D`` on 127.0.0.1:<free port>, accepting only ``user_key`` for the current user."""

    def __init__(self, root: Path, user_key: Path, name: str = "board"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.user = getpass.getuser()
        self.host_key = keygen(self.root / "ssh_host_ed25519_key")
        (self.root / "authorized_keys").write_text(public_key(user_key) + "\n")
        self.port = free_port()
        self.log = self.root / "sshd.log"
        self.config = self.root / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}", f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}", "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "MaxStartups 20:30:60", "",
        ]))
        self.proc: subprocess.Popen | None = None

    def known_hosts_line(self, port: int | None = None) -> str:
        return f"[127.0.0.1]:{port or self.port} {public_key(self.host_key)}\n"

    def start(self) -> "LoopbackBoard":
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        for _ in range(100):  # up to ~10 s
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} within 10 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class CutProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<upstream>; after ``cut_after`` bytes from the client
    (the upload direction) close both sides, like a link that dies mid-transfer."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.sent = 0
        self.cut = threading.Event()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            self._socks += [client, up]
            for src, dst, counted in ((client, up, True), (up, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        src.settimeout(0.5)
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if counted:
                room = self.cut_after - self.sent
                if room <= 0 or self.cut.is_set():
                    self._kill()
                    break
                data = data[:room]
                self.sent += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
            if counted and self.sent >= self.cut_after:
                self._kill()
                break

    def _kill(self) -> None:
        self.cut.set()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed.set()
        self._kill()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=5)
