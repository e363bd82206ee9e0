"""Helpers for the Kubernetes tests: throwaway TLS certificates, a webhook on a thread, schema checks."""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes_validate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# kubernetes_validate re-reads and re-parses its schema files on every call; they never change.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)

# Oldest and newest Kubernetes minor versions every manifest and patched pod must satisfy.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def validate_k8s(obj: dict[str, Any]) -> None:
    """Validate against the strict (no unknown fields) Kubernetes schemas of K8S_VERSIONS."""
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(obj, v, strict=True)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_tls(directory: Path, serial: int | None = None) -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for localhost/127.0.0.1 signed by it.

    Returns (ca.crt, tls.crt, tls.key). Files are written beside and renamed into place,
    as kubelet's atomic Secret update does.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("sidecar test CA")).issuer_name(_name("sidecar test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    pem = serialization.Encoding.PEM
    for path, data in zip(paths, (ca.public_bytes(pem), cert.public_bytes(pem),
                                  key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return paths


@contextmanager
def running_webhook(spec: Any, cert: Path, key: Path, reload_interval: float = 10.0) -> Iterator[tuple[str, Any]]:
    """Serve ``spec`` over HTTPS on 127.0.0.1 from a thread; yields (base URL, ReloadingCertificate)."""
    from sidecar.inject import server
    from sidecar.inject.tls import ReloadingCertificate

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: (asyncio.set_event_loop(loop), loop.run_forever()), daemon=True)
    thread.start()
    tls = ReloadingCertificate(cert, key)
    try:
        runner, port = asyncio.run_coroutine_threadsafe(
            server.start(spec, "127.0.0.1", 0, tls, tls_reload_interval=reload_interval), loop).result(10)
        yield f"https://127.0.0.1:{port}", tls
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def admission_review(pod: dict[str, Any] | None, *, uid: str = "7c1e2a9e-0000-4000-8000-000000000001",
                     namespace: str = "apps", operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for a pod creation."""
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "requestKind": {"group": "", "version": "v1", "kind": kind},
        "requestResource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": "0b1d", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if pod is None:
        del request["object"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()
