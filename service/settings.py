"""Every setting of the service, read from TRYON_* environment variables.

Names and defaults are the service contract shared with deploy and prep;
command-line flags of ``tryon-serve`` override them.
"""
from __future__ import annotations

import base64
import binascii
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.kernels import IMPLEMENTATIONS
from model.precision import PRECISIONS

from . import limits

CommaList = Annotated[list[str], NoDecode]
# The engine's choices, named where the engine defines them; "published" (the authors' own
# sampling, a reference for the tests) is never served.
Precision = Literal[PRECISIONS]
Sampler = Literal[tuple(name for name in IMPLEMENTATIONS if name != "published")]
# Standard Webhooks' retry schedule (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/
# standard-webhooks.md): seconds before each retry after the first attempt.
WEBHOOK_RETRY_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
# The auto TRYON_GARMENT_CHUNK on a CPU (Settings.garment_chunk_for): one garment per call
# measured cheapest per garment there, and it streams the first result soonest.
CPU_GARMENT_CHUNK = 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRYON_", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free one)")
    # The Open Inference Protocol over gRPC (service/api/grpc_server.py) on this port too; Triton's is 8001.
    grpc_port: int | None = Field(None, ge=1, le=65535, description="gRPC port (KServe v2 / Triton); unset: off")
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")
    # auto: fp16 convolutions on a GPU (>= 40 dB PSNR against fp32, flows and softmax fp32), fp32 on a CPU.
    precision: Precision = "auto"
    sampler: Sampler = Field("auto", description="deformable sampling implementation")
    weights: str | None = Field(None, description="checkpoint path; unset: the first known file in weights/")
    image_size: str = Field("256x192", description="model input size, HxW")
    # Front-end processes (HTTP, fetching, decoding, encoding) feeding the one engine process;
    # 1: everything in one process.
    workers: int = Field(1, ge=1, description="front-end processes feeding the one engine process")
    max_batch_size: int = Field(8, ge=1, description="most requests per engine batch")
    max_batch_wait_ms: float = Field(5, ge=0, description="longest wait for a batch to fill")
    queue_limit: int = Field(64, ge=1, description="requests waiting for the model; beyond it 503")
    max_garments: int = Field(8, ge=1)
    # Garments per engine call in /v1/tryon/batch (each chunk's results are streamed as it is done);
    # 0 = auto (garment_chunk_for).
    garment_chunk: int = Field(0, ge=0)
    request_timeout_s: float = Field(30, gt=0)
    drain_timeout_s: float = Field(30, ge=0)
    max_upload_bytes: int = Field(10_485_760, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    url_connect_timeout_s: float = Field(3, gt=0)
    url_read_timeout_s: float = Field(5, gt=0)
    url_total_timeout_s: float = Field(10, gt=0)
    url_max_bytes: int = Field(10_485_760, ge=1)
    url_allow_hosts: CommaList = []
    # URL fetches under way at once: in this process, and for one request (its others wait their turn).
    url_max_fetches: int = Field(32, ge=1, description="URL fetches under way at once in this process")
    url_fetches_per_request: int = Field(4, ge=1, description="URL fetches under way at once for one request")
    # What requests in flight hold together in this process (bodies, fetched URLs, images as their headers
    # say they decode); past it a request is refused with 503 and Retry-After (service/limits.py ByteBudget).
    max_bytes_in_flight: int = Field(536_870_912, ge=1_048_576)
    # Threads that decode and encode images (0: one a core); work beyond them waits its turn.
    decode_threads: int = Field(0, ge=0)
    # uvicorn, for a replica exposed without nginx in front (service/api/server.py, docs/deploy.md).
    max_connections: int = Field(1024, ge=1, description="connections and requests at once; beyond them 503")
    max_header_bytes: int = Field(32_768, ge=1024, description="a request's line and headers; beyond them 431")
    header_timeout_s: float = Field(10, gt=0, description="longest wait for a request's line and headers")
    # Each entry a key, or a key and its own webhook secrets: KEY:whsec_... (KEY:whsec_NEW:whsec_OLD while
    # rotating: both sign every delivery). A key without its own secrets has TRYON_WEBHOOK_SECRET's.
    api_keys: CommaList = []
    cors_origins: CommaList = []
    # GET / serves the try-on page (service/static/); turn it off where only the API should answer.
    demo_page: bool = True
    log_level: str = Field("info", description="critical, error, warning, info or debug")
    # The response cache (service/api/cache.py): an in-process LRU of this many bytes (0: off), or
    # with cache_url (redis://host:6379/0) Redis, shared by every replica, entries kept cache_ttl_s.
    cache_bytes: int = Field(67_108_864, ge=0)
    cache_url: str | None = None
    cache_ttl_s: float = Field(86_400, gt=0)
    cache_timeout_ms: float = Field(50, gt=0)
    # A person photo sent alone: the keypoints-only masking leaves the background that selfie
    # segmentation finds as it is. Off until shown to help with the real checkpoint.
    person_silhouette: bool = False
    # Catalog jobs (service/jobs/): POST /v1/jobs. Without jobs_url they live in this process (bounded by
    # jobs_memory_jobs and jobs_memory_bytes, lost on restart); with it in Redis, shared by every replica.
    jobs_enabled: bool = Field(True, description="serve /v1/jobs")
    jobs_url: str | None = None
    jobs_timeout_ms: float = Field(1000, gt=0, description="longest wait for one job-store operation")
    jobs_max_garments: int = Field(64, ge=1, description="garments per job (413 beyond)")
    # A job's body: images sent inline beside URLs (a job of 64 garments is meant to send URLs).
    jobs_max_body_bytes: int = Field(limits.JOBS_MAX_BODY_BYTES, ge=65_536, description="POST /v1/jobs body (413 beyond)")
    jobs_deadline_s: float = Field(86_400, gt=0, description="a job's default deadline (per job: timeout)")
    jobs_retention_s: float = Field(86_400, gt=0, description="how long a finished job's results are kept")
    jobs_task_garments: int = Field(4, ge=1, description="garments per task of the shared job queue")
    jobs_concurrency: int = Field(2, ge=1, description="job tasks this replica runs at once")
    jobs_claim_after_s: float = Field(60, gt=0, description="a task or delivery idle this long is taken over")
    jobs_memory_jobs: int = Field(1000, ge=1, description="embedded store: jobs held")
    jobs_memory_bytes: int = Field(536_870_912, ge=1, description="embedded store: input and result bytes held")
    # Standard Webhooks: the whsec_ secret the deliveries are signed with (one tenant, or the keys of
    # TRYON_API_KEYS without their own; whsec_NEW:whsec_OLD while rotating), the retry delays, one attempt's limit.
    webhook_secret: str | None = None
    webhook_retry_s: Annotated[list[float], NoDecode] = list(WEBHOOK_RETRY_S)
    webhook_timeout_s: float = Field(10, gt=0)

    @field_validator("url_allow_hosts", "api_keys", "cors_origins", "webhook_retry_s", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("weights", "cache_url", "jobs_url", "webhook_secret", "grpc_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return value or None

    @field_validator("cache_url", "jobs_url")
    @classmethod
    def _check_redis_url(cls, value: str | None, info) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{info.field_name} must be a redis://, rediss:// or unix:// URL, not {value!r}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is not None:
            _secrets(value.split(":"), "webhook_secret")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_key_secrets(cls, value: list[str]) -> list[str]:
        for entry in value:
            key, *secrets = _key_entry(entry)
            if not key:
                raise ValueError("api_keys: an entry has no key before its webhook secrets")
            _secrets(secrets, "api_keys")
        return value

    @cached_property
    def webhook_secrets(self) -> tuple[str, ...]:
        """TRYON_WEBHOOK_SECRET: its secrets (two while rotating), or none."""
        return tuple(self.webhook_secret.split(":")) if self.webhook_secret else ()

    @cached_property
    def key_secrets(self) -> dict[str, tuple[str, ...]]:
        """Each API key and the secrets its jobs' webhooks are signed with: its own, else TRYON_WEBHOOK_SECRET's
        (so keys of several tenants each need their own: one shared secret lets each forge the others')."""
        entries = (_key_entry(entry) for entry in self.api_keys)
        return {key: tuple(secrets) or self.webhook_secrets for key, *secrets in entries}

    @field_validator("webhook_retry_s")
    @classmethod
    def _check_delays(cls, value: list[float]) -> list[float]:
        if any(d < 0 for d in value):
            raise ValueError("webhook_retry_s must not be negative")
        return value

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"image_size must be HxW such as 256x192, not {value!r}")
        return f"{int(parts[0])}x{int(parts[1])}"

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level must be critical, error, warning, info or debug, not {value!r}")
        return value

    @cached_property
    def image_hw(self) -> tuple[int, int]:
        h, w = self.image_size.split("x")
        return int(h), int(w)

    def batch_sizes_for(self, device_type: str) -> tuple[int, ...]:
        """The batch sizes the engine warms up and pads to. On a GPU, a few fixed shapes (powers
        of two, and the max) keep kernels and allocations reused and padding costs little; on
        a CPU the cost grows with every item, so padding 5 up to 8 would be pure waste."""
        if device_type != "cuda":
            return tuple(range(1, self.max_batch_size + 1))
        sizes, n = [], 1
        while n < self.max_batch_size:
            sizes.append(n)
            n *= 2
        return tuple(sizes + [self.max_batch_size])

    def garment_chunk_for(self, device_type: str) -> int:
        """Garments per engine call of a /v1/tryon/batch job, at most TRYON_MAX_BATCH_SIZE. Auto: on a
        GPU the largest batch (there the widest call costs least per item); on a
        CPU the cost per item grows with the batch (256x192: 1.3 s/item at 2, 1.7 s/item at 4),
        so small chunks are both cheaper and stream sooner."""
        chunk = self.garment_chunk or (self.max_batch_size if device_type == "cuda" else CPU_GARMENT_CHUNK)
        return min(chunk, self.max_batch_size)

    @property
    def jobs_unavailable(self) -> str | None:
        """Why /v1/jobs is not served here, or None. Each front end of TRYON_WORKERS > 1 is its own process: an
        embedded job store there would be one store per front end, and a job's status would depend on which
        one a poll reached. The service still starts (so does every other route); /v1/jobs answers 503
        jobs_unavailable with this, /readyz shows it and start-up logs it once."""
        if self.jobs_enabled and self.workers > 1 and self.jobs_url is None:
            return (f"catalog jobs need TRYON_JOBS_URL=redis://... (a Redis that does not evict) with TRYON_WORKERS "
                    f"{self.workers}: each front end is its own process, so jobs kept in one would not be seen by "
                    f"the others")
        return None

    @property
    def request_body_limit(self) -> int:
        """/v1/tryon and /v1/prepare (service/limits.py)."""
        return limits.request_body_limit(self.max_upload_bytes)

    @property
    def jobs_body_limit(self) -> int:
        """POST /v1/jobs: the person side and up to TRYON_JOBS_MAX_GARMENTS garments (service/limits.py), at most
        TRYON_JOBS_MAX_BODY_BYTES."""
        return limits.jobs_body_limit(self.max_upload_bytes, self.jobs_max_garments, self.jobs_max_body_bytes)

    @property
    def batch_body_limit(self) -> int:
        """/v1/tryon/batch: the person side and TRYON_MAX_GARMENTS garments (service/limits.py)."""
        return limits.batch_body_limit(self.max_upload_bytes, self.max_garments)


def _key_entry(entry: str) -> list[str]:
    """"KEY:whsec_A:whsec_B" -> [KEY, whsec_A, whsec_B] (a key may hold ":", a secret's base64 can not)."""
    key, *secrets = entry.split(":whsec_")
    return [key, *(f"whsec_{secret}" for secret in secrets)]


def _secrets(secrets: list[str], setting: str) -> None:
    """Refuses more than two secrets (the one in use and the one being rotated out), or one not in
    Standard Webhooks' form."""
    if len(secrets) > 2:
        raise ValueError(f"{setting}: at most two webhook secrets at once (the new one and the one being retired)")
    for secret in secrets:
        try:
            if not secret.startswith("whsec_") or not base64.b64decode(secret[6:], validate=True):
                raise ValueError
        except (ValueError, binascii.Error):
            raise ValueError(f"{setting}: a webhook secret must be a Standard Webhooks secret: whsec_ and base64 "
                             "bytes (e.g. whsec_ + base64 of 32 random bytes)") from None
