"""Run an S3-compatible server (s3proxy on a local directory) from Maven-resolved jars, no
container: for the tests of IMAGE_STORE=s3://... and for trying it by hand.

The jars come from `deploy/s3proxy/pom.xml` (`make s3proxy-jars`) into `.cache/s3proxy-libs`.
`python -m shared.devs3 run [--port N] [--bucket B]` serves until interrupted and prints the
variables to point packline at it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.devbroker import ROOT, free_port

LIBS = ROOT / ".cache" / "s3proxy-libs"
POM = ROOT / "deploy" / "s3proxy" / "pom.xml"


def have_jars() -> bool:
    return LIBS.is_dir() and any(LIBS.glob("s3proxy-*.jar"))


def fetch_jars() -> None:
    """What `make s3proxy-jars` runs: the POM's runtime classpath from Maven Central into LIBS."""
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-DoutputDirectory={LIBS}"], check=True)
    (LIBS / ".installed").touch()


@dataclass
class S3Proxy:
    """One s3proxy process storing buckets as directories under `data_dir/blobs`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    access_key: str = "packline"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "s3proxy.log"

    def env(self) -> dict[str, str]:
        """The variables that point packline (boto3) at this server."""
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def properties(self) -> dict[str, str]:
        return {
            "s3proxy.endpoint": self.endpoint,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": self.access_key,
            "s3proxy.credential": self.secret_key,
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(self.data_dir / "blobs"),
            "jclouds.identity": self.access_key,
            "jclouds.credential": self.secret_key,
        }

    def start(self, timeout: float = 60.0) -> None:
        if not have_jars():
            raise SystemExit(f"s3proxy jars missing in {LIBS}: run `make s3proxy-jars`")
        (self.data_dir / "blobs").mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "s3proxy.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        cmd = ["java", "-Xms64m", "-Xmx256m", "-cp", f"{LIBS}/*", "org.gaul.s3proxy.Main", "--properties", str(props)]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Ready: any HTTP answer (an unsigned request gets 403)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"s3proxy exited with code {self._proc.returncode}; see {self.log_file}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"s3proxy at {self.endpoint} did not answer within {timeout:.0f}s; see {self.log_file}")

    def make_bucket(self, name: str) -> None:
        from shared.images import s3_client

        s3_client(self.endpoint, self.region, self.access_key, self.secret_key).create_bucket(Bucket=name)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.devs3", description=__doc__)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", default="packline")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "s3")
    args = parser.parse_args(argv)
    server = S3Proxy(args.data_dir, args.port, secret_key="packline-dev-secret")
    server.start()
    try:
        if not (args.data_dir / "blobs" / args.bucket).is_dir():
            server.make_bucket(args.bucket)
        print(f"s3proxy on {server.endpoint}; data in {args.data_dir}. For packline:")
        for k, v in {**server.env(), "IMAGE_STORE": f"s3://{args.bucket}/images"}.items():
            print(f"  export {k}={v}")
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
