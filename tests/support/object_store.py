"""A real S3-compatible server on loopback for the tests: moto's standalone server, started as
its own HTTP process (no MinIO binary can be installed here; docker-compose.yml runs MinIO). The
store talks to it over HTTP exactly as to MinIO or AWS."""

from __future__ import annotations

import sys
import urllib.request
import uuid
from pathlib import Path

from . import Process, free_port, wait_for

ACCESS_KEY = "missmod-test"
SECRET_KEY = "missmod-test-secret"


class S3Server:
    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        import os

        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = Process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], env,
                               self.log_dir / f"s3-{self.port}.log")
        wait_for(self._answers, 60, what="the S3 server to answer")
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    def new_bucket(self) -> str:
        import boto3

        name = f"missmod-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        client.create_bucket(Bucket=name)
        return name

    def settings_for(self, settings, bucket: str, prefix: str = "artifacts"):
        """`settings` with the artifact store in this server's bucket."""
        return settings.model_copy(update={"artifact_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.endpoint,
                                           "aws_access_key_id": _secret(ACCESS_KEY),
                                           "aws_secret_access_key": _secret(SECRET_KEY)})

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def _secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)
