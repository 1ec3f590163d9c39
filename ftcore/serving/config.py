"""The serving endpoint's settings (`ftflow serve --config FILE`, or a recipe's `serve:` section for the endpoint the
pipeline's monitor stage starts). Every field has a default that suits one CPU machine; docs/serving.md explains
each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ftcore.errors import UserError
from ftcore.paths import home
from ftcore.recipe_yaml import read_yaml_file
from ftcore.schema import Strict, describe_error

TOKEN_ENV = "FTFLOW_SERVE_TOKEN"  # where the bearer token comes from when --token is not given: never a file
ADMIN_TOKEN_ENV = "FTFLOW_ADMIN_TOKEN"  # the admin routes' token (loading adapters), when --admin-token is not given
# The request log's URL when the config names none: a production database URL carries a password, so it comes from
# the environment (a Kubernetes Secret, the compose .env), not from a file.
REQUEST_LOG_ENV = "FTFLOW_REQUEST_LOG_URL"


class BatchingConfig(Strict):
    """Batching. Text completions of a causal model are batched continuously: a request joins the running decode
    batch at its next step and leaves it when its answer is done, up to `max_batch_size` at once
    (ftcore/serving/decode_loop.py). Classifications and requests with images are batched dynamically: requests that
    arrive together are generated together, a batch closing when it holds `max_batch_size` requests or its first
    request has waited `max_wait_ms`. `continuous: false` batches completions dynamically too."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1, le=512)
    max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    continuous: bool = True


class CacheConfig(Strict):
    """Responses to deterministic requests (temperature 0), keyed on model version + prompt + parameters."""

    max_entries: int = Field(1024, ge=0, description="0 turns the cache off")


class LimitsConfig(Strict):
    """What one request may ask for; beyond it the request gets a 4xx naming the limit."""

    max_prompt_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch_inputs: int = Field(64, ge=1, description="prompts (or texts to classify) in one request")
    # A client that sends its request slowly holds a connection (and a file descriptor) meanwhile: both phases are
    # bounded, so that idle or trickling connections cannot pile up (408).
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="from the connection (or the last answer on "
                                                                    "it) until the request's headers are complete")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="from the headers until the body is complete")
    stream_stall_s: float = Field(30.0, gt=0, le=3600, description="a streamed chunk the client has not taken "
                                                                  "within this is the end of its stream")


class ImagesConfig(Strict):
    """Images in chat requests to a vision-language model (docs/serving.md, "Images"): how many and how large, and
    the hosts whose http(s) image URLs the server may fetch. With no host listed the server fetches nothing: a
    server that fetches what clients name can be made to reach addresses only it can reach."""

    max_images: int = Field(8, ge=1, le=256, description="images in one request")
    max_image_bytes: int = Field(10_000_000, ge=1024, description="bytes of one image as sent (an inline image also "
                                                                  "counts against limits.max_body_bytes)")
    max_pixels: int = Field(4096 * 4096, ge=1, description="width × height of one image, checked before it is "
                                                           "decoded")
    url_hosts: list[str] = Field(default_factory=list, description="hosts whose http(s) image URLs are fetched "
                                                                   "(`ftflow serve --image-url-host`); empty: "
                                                                   "images come inline as data: URLs only")
    fetch_timeout_s: float = Field(10.0, gt=0, le=300, description="to fetch one image from an allowed host")

    @field_validator("url_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        """As a URL's hostname reads: lowercase, an IPv6 address without brackets. A host is given without scheme,
        port or path (one colon is a port; an IPv6 address has several)."""
        names = [host.strip().lower().strip("[]") for host in hosts]
        for host, name in zip(hosts, names, strict=True):
            if not name or any(c in name for c in "/@ ") or name.count(":") == 1:
                raise ValueError(f"{host!r} is not a host name; give the host alone, e.g. images.example.org")
        return names


class RequestLogConfig(Strict):
    """Where every request is recorded for the monitor: any SQLAlchemy URL (SQLite by default)."""

    url: str | None = Field(None, description="default: $FTFLOW_REQUEST_LOG_URL, else sqlite:///$FTFLOW_HOME/requests.db")
    sample_rate: float = Field(1.0, ge=0, le=1, description="share of requests whose input and output text are kept")

    def resolved_url(self) -> str:
        return self.url or os.environ.get(REQUEST_LOG_ENV) or f"sqlite:///{home() / 'requests.db'}"


class AdaptersConfig(Strict):
    """LoRA adapters of registered versions answered on this server's base (docs/serving.md, "Many adapters on one
    base"): a request's `model` names one."""

    serve: dict[str, str] = Field(default_factory=dict, description="NAME: models:/MODEL@ALIAS or models:/MODEL/"
                                                                    "VERSION (`ftflow serve --adapter NAME=URI`)")
    every_version: list[str] = Field(default_factory=list, description="registered models whose every version is "
                                     "an adapter named MODEL/VERSION (`ftflow serve --all-versions MODEL`); versions "
                                     "registered later join every reload_interval_s, versions that are no LoRA "
                                     "adapter of this base are passed over with a logged line")
    max_loaded: int = Field(8, ge=1, le=1024, description="adapters attached at once; one more evicts the least "
                                                          "recently used, which loads again when asked for")


class ServeConfig(Strict):
    batching: BatchingConfig = BatchingConfig()
    adapters: AdaptersConfig = AdaptersConfig()
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    images: ImagesConfig = ImagesConfig()
    reload_interval_s: float = Field(30.0, ge=0, description="how often the alias is checked; 0: never reload")
    variant: Literal["model", "adapter", "merged", "merged_bf16", "int8"] = Field(
        "model", description="the registered model, or one of its exports (docs/deploy.md); int8 for CPUs")
    device: str = Field("cpu", description="torch device the model runs on: cpu, cuda, cuda:1")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the weights' type in memory: bfloat16 or float16 halve it (on a GPU, faster too)")
    max_models: int = Field(2, ge=0, le=16, description="other versions or exports that requests' `model` picks "
                                                         "(the playground's compare mode), kept loaded beside the "
                                                         "serving one; 0: none")


    @model_validator(mode="after")
    def _int8_keeps_its_types(self) -> ServeConfig:
        if self.variant == "int8" and self.dtype != "float32":
            raise ValueError(f"dtype {self.dtype}: the int8 export keeps its own types; leave dtype float32")
        return self


def load_serve_config(path: Path | None) -> ServeConfig:
    """The settings in a YAML file (the defaults when none); a bad file is one line naming it and the field."""
    if path is None:
        return ServeConfig()
    try:
        raw = read_yaml_file(Path(path)) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read the serving config ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: " + "; ".join(describe_error(err, ServeConfig) for err in e.errors())) from None
