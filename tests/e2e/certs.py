"""Throwaway PKI for the TLS/mTLS tests, made with the ``openssl`` command line tool.

Every certificate is X.509 v3 with explicit extensions (from a generated extension file, so the
result does not depend on the system's openssl.cnf) and an EC P-256 key (fast to generate).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


def openssl_binary() -> str:
    """The openssl CLI, or a clear error saying how to get it."""
    found = shutil.which("openssl")
    if not found:
        raise RuntimeError(
            "the openssl command line tool is needed to make test certificates "
            "(apt-get install -y openssl)"
        )
    return found


def _run(*args: str, cwd: Path) -> None:
    r = subprocess.run([openssl_binary(), *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""
    cert: Path
    key: Path

    @property
    def as_tuple(self) -> tuple[str, str]:
        return (str(self.cert), str(self.key))


def _key(path: Path) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(path), cwd=path.parent)


def make_ca(directory: Path, name: str, cn: str, *, name_constraints: str | None = None) -> Pair:
    """A self-signed CA (basicConstraints CA:TRUE, keyCertSign), optionally with openssl
    ``nameConstraints`` (e.g. ``permitted;DNS:.team-a.example.org``)."""
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    ext.write_text(
        "[v3]\n"
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        + (f"nameConstraints = critical, {name_constraints}\n" if name_constraints else "")
    )
    _key(key)
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-signkey", str(key), "-days", DAYS, "-sha256",
         "-extfile", str(ext), "-extensions", "v3", "-out", str(cert), cwd=directory)
    return Pair(cert, key)


def make_intermediate(directory: Path, name: str, ca: Pair, *, cn: str, name_constraints: str | None = None) -> Pair:
    """An intermediate CA signed by ``ca``, optionally with openssl ``nameConstraints``."""
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    ext.write_text(
        "[v3]\n"
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
        + (f"nameConstraints = critical, {name_constraints}\n" if name_constraints else "")
    )
    _key(key)
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
         "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(ext), "-extensions", "v3",
         "-out", str(cert), cwd=directory)
    return Pair(cert, key)


def with_chain(directory: Path, name: str, leaf: Pair, *intermediates: Pair) -> Pair:
    """The leaf's certificate file followed by the intermediates', for a client to present."""
    chain = directory / f"{name}-chain.pem"
    chain.write_bytes(b"".join(p.cert.read_bytes() for p in (leaf, *intermediates)))
    return Pair(chain, leaf.key)


def make_leaf(directory: Path, name: str, ca: Pair, *, cn: str, sans: list[str] | None = None,
              server: bool = False, subject: str | None = None) -> Pair:
    """A leaf certificate signed by ``ca``. ``sans``: openssl subjectAltName items such as
    ``URI:spiffe://...``, ``DNS:localhost``, ``IP:127.0.0.1``. ``subject`` overrides ``/CN={cn}``
    (several CNs: ``/CN=a/CN=b``)."""
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    lines = [
        "[v3]",
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature",
        f"extendedKeyUsage = {'serverAuth' if server else 'clientAuth'}",
        "authorityKeyIdentifier = keyid",
    ]
    if sans:
        lines.append("subjectAltName = " + ", ".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _key(key)
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", subject or f"/CN={cn}", "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
         "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(ext), "-extensions", "v3",
         "-out", str(cert), cwd=directory)
    return Pair(cert, key)
