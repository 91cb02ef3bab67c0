"""A secured client listener for the development broker: TLS from a throwaway CA plus
SASL/SCRAM-SHA-512 authentication (no authorizer: authenticated clients may do anything).

`make_test_security(dir)` creates everything with `openssl`; `Security.broker_properties()`
is what a node adds to its server.properties, `Security.client_kwargs()` what an aiokafka
producer, consumer or admin client needs to connect.
"""

from __future__ import annotations

import secrets
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class Security:
    ca_file: Path  # PEM of the CA that signed the broker certificate (what clients trust)
    keystore: Path  # PKCS12: broker key + certificate chain, for 127.0.0.1 and localhost
    keystore_password: str
    username: str  # SCRAM-SHA-512 user, created when the storage is formatted
    password: str

    def scram_arg(self) -> str:
        """The StorageTool `--add-scram` value."""
        return f"{MECHANISM}=[name={self.username},password={self.password}]"

    def broker_properties(self, listener: str) -> dict[str, str]:
        """Server-side TLS + SCRAM settings for the SASL_SSL listener named `listener`."""
        prefix = f"listener.name.{listener.lower()}"
        return {
            "sasl.enabled.mechanisms": MECHANISM,
            f"{prefix}.sasl.enabled.mechanisms": MECHANISM,
            f"{prefix}.{MECHANISM.lower()}.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.keystore_password,
            "ssl.key.password": self.keystore_password,
            "ssl.client.auth": "none",
        }

    def ssl_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=str(self.ca_file))

    def client_kwargs(self, password: str | None = None) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient (`password` overrides)."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password if password is None else password,
            "ssl_context": self.ssl_context(),
        }

    def service_env(self) -> dict[str, str]:
        """The packline services' settings (shared/settings.py) for this listener."""
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": MECHANISM, "KAFKA_SASL_USERNAME": self.username,
            "KAFKA_SASL_PASSWORD": self.password, "KAFKA_SSL_CAFILE": str(self.ca_file),
        }


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_security(directory: Path, username: str = "packline", days: int = 30) -> Security:
    """A self-signed CA (ca.pem), a broker certificate signed by it for IP 127.0.0.1 and DNS
    localhost in a PKCS12 keystore (broker.p12), and a random SCRAM password for `username`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    store_password = secrets.token_hex(12)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=packline-dev-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "broker.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", str(days), "-sha256", "-extfile", "broker.ext", cwd=d)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem", "-name", "broker",
             "-out", "broker.p12", "-passout", f"pass:{store_password}", cwd=d)
    return Security(d / "ca.pem", d / "broker.p12", store_password, username, secrets.token_hex(16))
