"""Certificates for the TLS tests, made with the `cryptography` package: a CA, and
certificates it issues for IP addresses (servers) or for no address (clients); and what a
plain-HTTP client gets from a server that speaks HTTPS only."""
import datetime
import ipaddress
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _validity(builder):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def make_ca(folder, name):
    """A self-signed CA: (key, certificate, path of its PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_validity(x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                      .public_key(key.public_key()))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = os.path.join(folder, f"{name}.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue(folder, name, ca_key, ca_cert, ips=()):
    """A certificate of the CA for `ips` (subject alternative names; none: a client's), with
    no extended key usage, so that a node may present it as server and as client. Returns
    the paths of its PEM certificate and key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder()
                        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                        .issuer_name(ca_cert.subject).public_key(key.public_key()))
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = os.path.join(folder, f"{name}.crt"), os.path.join(folder, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def plain_http_answer(host, port):
    """What a plain-HTTP request gets (b"" when the connection is closed or reset)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return b""
