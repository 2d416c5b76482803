"""All settings in one place, read from environment variables (and an optional `.env`).

With nothing set, everything lives under VAR_DIR (`./var`): a SQLite database, a
filesystem broker that needs no server, artifacts and data. Production sets DATABASE_URL
(postgresql+psycopg://…) and BROKER_URL (redis://…).
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FILESYSTEM_BROKER = "filesystem://"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    var_dir: Path = Field(Path("var"), description="Embedded database, broker folders and artifacts live here")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in VAR_DIR")
    broker_url: str = Field("", description="Celery broker; default: filesystem broker in VAR_DIR")
    data_dir: Path | None = Field(None, description="Datasets; default VAR_DIR/data")
    artifact_dir: Path | None = Field(None, description="Checkpoints and outputs; default VAR_DIR/artifacts")
    artifact_url: str = Field(
        "", description="The artifact store every host shares (checkpoints, run files, extracted features): a folder "
                        "or shared mount (a path or file://…), or an S3-compatible bucket (s3://bucket/prefix); "
                        "default ARTIFACT_DIR")
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible store's address (MinIO: http://minio:9000); unset: AWS S3")
    aws_access_key_id: SecretStr | None = Field(None, description="The object store's access key (s3:// only)")
    aws_secret_access_key: SecretStr | None = Field(None, description="The object store's secret key (s3:// only)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    broker_poll_interval: float = Field(0.05, gt=0, description="Seconds between filesystem-broker polls")
    stream_poll_interval: float = Field(0.25, gt=0, description="Seconds between database polls of a live stream")
    stream_keepalive_seconds: float = Field(
        15, gt=0, le=300, description="Seconds between keep-alive comments on an idle live stream (so a proxy "
                                     "does not close it)")
    heartbeat_interval: float = Field(10.0, gt=0, description="Seconds between worker heartbeats of a running run")
    task_queue: str = Field("missmod", description="Celery queue the runs go to")
    ravdess_dir: Path | None = Field(None, description="RAVDESS's unpacked Actor_XX folders; default DATA_DIR/ravdess")
    enterface05_dir: Path | None = Field(
        None, description="eNTERFACE'05's unpacked 'subject N' folders; default DATA_DIR/enterface05")
    video_frame_size: int = Field(112, ge=8, le=1024, description="Side of the square central frames, in pixels")
    video_n_mels: int = Field(64, ge=1, le=512, description="Mel bands of the segments' log-Mel spectrograms")
    preprocess_workers: int | None = Field(None, ge=1, description="Processes decoding clips; default every core")
    heartbeat_timeout: float = Field(
        120.0, gt=0, description="Seconds without a heartbeat after which a running run's worker is taken for dead")
    live_run_timeout: float = Field(
        60.0, gt=0, description="Seconds without a heartbeat from the script logging a live run after which the run "
                                "is marked lost (failed); its client heartbeats four times as often")
    reconcile_interval: float = Field(
        30.0, gt=0, description="Seconds between the API's passes over runs whose worker died or whose id never "
                                "reached the broker")
    run_max_retries: int = Field(
        3, ge=0, description="Times a run whose worker died is queued again before it is failed (a run that kills "
                             "its worker every time, e.g. out of memory, must not loop forever)")
    broker_visibility_timeout: int = Field(
        7 * 24 * 3600, gt=0, description="Redis: seconds before an unacknowledged run id is delivered again; above "
                                         "the longest run (a duplicate delivery is refused by the database anyway)")
    api_token: SecretStr | None = Field(
        None, description="When set, every request but /api/health needs it: `Authorization: Bearer <token>` from "
                          "scripts, a sign-in (session cookie) in the browser. Set it whenever anyone else can reach "
                          "the port")
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names the dashboard is reached by (the Host header), e.g. "
                    "`missmod.example.org`; `*.example.org` for subdomains. Other names get 400, so a web page "
                    "cannot reach the API by pointing its own name at this address (DNS rebinding). Loopback names "
                    "are always accepted; required when HOST is beyond localhost")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses (or networks, `10.0.0.0/8`) of the reverse proxies in front of the "
                    "API whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed. From any other address they "
                    "are ignored, so a client cannot pass for another to escape the sign-in throttle and the stream "
                    "caps. Default: none (loopback included: a proxy on this host must be named, 127.0.0.1)")
    sign_in_attempts_per_minute: int = Field(
        10, ge=1, description="Wrong tokens one client may try per minute at sign-in before 429")
    statement_timeout: float = Field(
        30.0, ge=0, description="PostgreSQL: seconds one query of the API may run (or wait for a lock) before the "
                                "database stops it and the request gets 503 with Retry-After, so no slow query holds "
                                "a connection for minutes, even after its client left; 0: no limit. The workers' "
                                "writes and the migrations are not limited")
    max_streams: int = Field(
        1000, ge=1, description="Live streams (runs, sweeps, workers, dataset jobs) one API process holds at once; 503 with Retry-After "
                                "above")
    max_streams_per_client: int = Field(
        50, ge=1, description="Live streams one client address may hold at once in one API process")
    max_classes: int = Field(1000, ge=2, description="Most classes a features file may have")
    features_max_bytes: int = Field(
        4 * 2**30, gt=0, description="Largest decoded size of a features file's arrays, read from their headers "
                                     "before anything is allocated")
    features_cache_bytes: int = Field(
        2**30, ge=0, description="Memory for parsed features files per process (least recently used go first)")
    metrics_cache_bytes: int = Field(
        64 * 2**20, ge=0, description="Memory for metrics answers the API keeps, per cache (finished runs' answers by "
                                      "their ETag, running runs' thinned columns until their next point), least "
                                      "recently used out first")
    series_cache_points: int = Field(
        2_000_000, ge=0, description="Metric points (about 24 bytes each) of recently read runs the API keeps to "
                                     "answer format=columns by reading only the new ones")
    secure_cookies: bool = Field(False, description="Mark the session cookie Secure (set when served over HTTPS)")
    max_request_bytes: int = Field(1_000_000, gt=0, description="Largest request body accepted (413 above)")
    predict_timeout: float = Field(
        20.0, gt=0, le=600, description="Deadline of a prediction (POST /api/runs/{id}/predict): a worker must take it "
                                        "and answer within it, else 503; it never holds a worker's slot longer")
    predict_max_rows: int = Field(10_000, ge=1, le=1_000_000, description="Most samples one prediction request may hold")
    runs_per_gpu: int = Field(
        1, ge=1, le=64, description="Runs one worker trains at once, each in its own process (slots): above 1, small "
                                    "runs share the worker's GPU (or a CPU-only host trains several runs at once)")
    threads_per_run: int | None = Field(
        None, ge=1, le=1024, description="CPU threads each run's torch uses; default: the worker's cores ÷ "
                                         "RUNS_PER_GPU (or OMP_NUM_THREADS when that is set), so concurrent runs "
                                         "do not oversubscribe the cores")
    checkpoint_interval: float = Field(
        5.0, ge=0, description="Seconds between a run's checkpoints at most: one is written after an epoch once this "
                               "long has passed since the last, and always after the last epoch and when the run "
                               "stops; 0: after every epoch. A run killed in between resumes from the last one")
    system_metrics_interval: float = Field(
        2.0, gt=0, description="Seconds between samples of a run's system metrics (GPU utilisation and memory, "
                               "process CPU and memory); they are stored averaged per epoch")
    webhook_url: str | None = Field(
        None, max_length=2000, pattern=r"^https?://[^\s\x00-\x1f]+$",
        description="Called (POST, JSON with a Slack-compatible `text`) when a run fails and when a sweep finishes; "
                    "e.g. a Slack or Mattermost incoming webhook")
    gpu_lock_dir: Path | None = Field(
        None, description="Where the workers of one host claim their GPU (`python -m worker.gpu_worker`); shared "
                          "by the workers of the host; default VAR_DIR/gpu-locks")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="`make run`'s server and worker: warning shows problems only; info (or `--verbose`) "
                               "adds Celery's banner and log and every request the server answers")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value):  # LOG_LEVEL=INFO, as loggers spell it
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("threads_per_run", mode="before")
    @classmethod
    def _empty_is_default(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _host_patterns(cls, names: list[str]) -> list[str]:
        for name in names:
            if "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
                raise ValueError(f"{name!r}: a host name, `*.example.org` for its subdomains, or `*`")
        return names

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"{address!r}: an IP address or network of a reverse proxy (e.g. 10.0.0.5 or "
                                 "10.0.0.0/24)") from None
        return addresses

    @field_validator("api_token", "webhook_url", "aws_access_key_id", "aws_secret_access_key", "s3_endpoint_url",
                     mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):  # also `WEBHOOK_URL=`
        return None if isinstance(value, str) and not value.strip() else value  # `API_TOKEN=` in .env.example

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if self.api_token is not None and len(self.api_token.get_secret_value()) < 16:
            raise ValueError("API_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ValueError("HEARTBEAT_TIMEOUT must be more than twice HEARTBEAT_INTERVAL, or one late heartbeat "
                             "would make a live run look dead")
        if not self.trusted_hosts and self.listens_beyond_localhost:
            raise ValueError(f"TRUSTED_HOSTS is required when HOST ({self.host}) is beyond localhost: the names the "
                             "dashboard is reached by, e.g. TRUSTED_HOSTS=missmod.example.org")
        self.var_dir = self.var_dir.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.var_dir / 'missmod.db'}"
        if not self.broker_url:
            self.broker_url = FILESYSTEM_BROKER
        self.data_dir = (self.data_dir or self.var_dir / "data").expanduser().absolute()
        self.artifact_dir = (self.artifact_dir or self.var_dir / "artifacts").expanduser().absolute()
        self.artifact_url = self.artifact_url.strip() or str(self.artifact_dir)
        self.ravdess_dir = (self.ravdess_dir or self.data_dir / "ravdess").expanduser().absolute()
        self.enterface05_dir = (self.enterface05_dir or self.data_dir / "enterface05").expanduser().absolute()
        self.gpu_lock_dir = (self.gpu_lock_dir or self.var_dir / "gpu-locks").expanduser().absolute()
        return self

    def video_options(self):
        """Where the raw audio-visual datasets are and how they are preprocessed (training library)."""
        from training.audiovisual.catalog import VideoOptions
        from training.audiovisual.config import PreprocessConfig

        return VideoOptions(
            roots={name: path for name, path in (("ravdess", self.ravdess_dir), ("enterface05", self.enterface05_dir))
                   if path is not None},
            config=PreprocessConfig(frame_size=self.video_frame_size, n_mels=self.video_n_mels),
            workers=self.preprocess_workers,
        )

    def feature_limits(self):
        """What a features file may hold, for the training library's reader."""
        from training.datasets.features import FeatureLimits

        return FeatureLimits(max_bytes=self.features_max_bytes, max_classes=self.max_classes,
                             cache_bytes=self.features_cache_bytes)

    @property
    def broker_dir(self) -> Path:
        return self.var_dir / "broker"

    @property
    def allowed_hosts(self) -> list[str]:
        """The Host names a request may carry (Starlette's TrustedHostMiddleware): TRUSTED_HOSTS and
        the loopback names, an IPv6 address in brackets as a Host header writes it."""
        loopback = [f"[{name}]" if ":" in name else name for name in sorted(LOOPBACK_HOSTS)]
        return [*(name.lower().rstrip(".") for name in self.trusted_hosts), *loopback]

    @property
    def listens_beyond_localhost(self) -> bool:
        return self.host not in LOOPBACK_HOSTS

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem:")

    @property
    def artifacts_are_local(self) -> bool:
        """Whether the artifact store is a folder on this machine (or a mount of a shared one)."""
        return "://" not in self.artifact_url or self.artifact_url.startswith("file://")

    def make_dirs(self) -> None:
        for path in (self.var_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        if self.artifacts_are_local:
            Path(self.artifact_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        if self.uses_filesystem_broker:
            for sub in ("queue", "processed", "control"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)


@functools.cache
def get_settings() -> Settings:
    settings = Settings()
    settings.make_dirs()
    return settings
