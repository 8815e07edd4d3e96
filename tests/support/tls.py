"""TLS in the tests: a CA and certificates made with the openssl command (as docs/tls.md
tells an operator to), and a real stunnel (Debian's stunnel4) terminating TLS, with mutual
TLS, in front of a real beanstalkd; started in the foreground and stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.beanstalkd import free_port

__all__ = ["Certificates", "Stunnel", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr}")


def _signed(folder: Path, name: str, subject: str, ca: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip


def make_certificates(folder: Path, prefix: str = "") -> Certificates:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = f"{prefix}ca"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out",
             f"{ca}.pem", "-days", "2", "-subj", f"/CN={prefix}test CA", cwd=folder)  # fmt: skip
    _signed(folder, f"{prefix}server", "/CN=localhost", ca,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    _signed(folder, f"{prefix}client", "/CN=tubeworker", ca, "extendedKeyUsage=clientAuth\n")
    return Certificates(
        folder,
        folder / f"{ca}.pem",
        folder / f"{prefix}server.pem",
        folder / f"{prefix}server.key",
        folder / f"{prefix}client.pem",
        folder / f"{prefix}client.key",
    )


class Stunnel:
    """``stunnel`` accepting TLS on a free loopback port (a client certificate signed by
    ``certs.ca`` required) and passing the bytes to ``backend`` (a beanstalkd's port)."""

    def __init__(self, certs: Certificates, backend_port: int, *, config: str | None = None):
        self.certs = certs
        self.port = free_port()
        self.backend_port = backend_port
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = certs.folder / f"stunnel-{self.port}.log"

    @property
    def address(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def start(self) -> Stunnel:
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            raise RuntimeError("stunnel is not installed (make test installs stunnel4)")
        config = self.certs.folder / f"stunnel-{self.port}.conf"
        config.write_text(
            self.config
            or (
                "foreground = yes\npid =\n\n[beanstalkd]\n"
                f"accept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{self.backend_port}\n"
                f"cert = {self.certs.server_cert}\nkey = {self.certs.server_key}\n"
                f"CAfile = {self.certs.ca}\nrequireCert = yes\nverifyChain = yes\n"
            )
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening: the port takes a connection
            if self.proc.poll() is not None:
                raise RuntimeError(f"stunnel exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"stunnel did not listen within 10 s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> Stunnel:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
