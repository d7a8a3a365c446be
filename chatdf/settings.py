"""All configuration of chatdf, read from environment variables in one place."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_S = 24 * 3600
SAMPLE_PATH = "/samples/sales.parquet"  # where the app serves the bundled sample


def sample_file() -> Path:
    """The bundled sample dataset (sales by region/product/month), shipped in the package."""
    return Path(__file__).resolve().parent / "sample" / "sample.parquet"


class Settings(BaseSettings):
    """Every knob of the service; environment variable names are the field names upper-cased."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Storage and runtime
    database_url: str = ""  # empty: sqlite file under ./data/
    data_dir: str = "./data"
    database_busy_timeout_s: float = 30.0  # SQLite: how long a request waits for a lock (503)
    # PostgreSQL connections per process: an edge, and each session actor (docs/architecture.md)
    database_pool_size: int = 5
    database_max_overflow: int = 5
    actor_database_pool_size: int = 1
    actor_database_max_overflow: int = 2
    ray_address: str = ""  # empty: start an embedded local Ray
    ray_namespace: str = "chatdf"
    ray_num_cpus: int | None = None  # embedded Ray only
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_timeout_s: int = 10  # at SIGTERM, requests still running get this long
    # GET /health/ready checks the database and Ray at most once per this many seconds
    health_ready_cache_s: float = 5.0

    # Auth
    dev_login: bool | None = None  # None: on only when bound to loopback
    dev_login_allow_remote: bool = False  # also answer non-loopback or proxied requests
    require_referral_key: bool = False
    session_ttl_s: int = 7 * DAY_S
    app_url: str = "/"  # where the OAuth callback redirects the browser
    google_client_id: str = ""
    google_client_secret: SecretStr = SecretStr("")
    google_redirect_uri: str = "http://127.0.0.1:8000/auth/google/callback"
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_userinfo_url: str = "https://openidconnect.googleapis.com/v1/userinfo"
    oauth_state_ttl_s: int = 600
    auth_rate_limit: str = "30/minute"  # sign-in requests per client address and edge
    cookie_secure: bool = False

    # WebSocket
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 90.0
    session_check_interval_s: float = 30.0  # sockets of a logged-out/expired session close
    cors_origins: str = "http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173"
    ws_max_frame_bytes: int = 64 * 1024
    ws_send_queue_max: int = 5000  # frames waiting for one socket; past it the socket is dropped
    ws_send_timeout_s: float = 10.0  # one frame's write; a socket slower than this is dropped

    # Session actors
    actor_idle_timeout_s: float = 120.0  # no call, turn or load this long: the actor exits
    # Started, unbound session actors each edge keeps ready (actors/spares.py): a user's first
    # call binds one instead of waiting for a process to start. Each costs one idle process.
    warm_session_actors: int = Field(default=2, ge=0, le=64)
    # Session actors an edge starts at once (the rest wait their turn, in order): 0 = the
    # cluster's CPU count. Starting all of a burst at once shares the CPU among them, so every
    # one is ready only at the end (actors/spares.py, docs/architecture.md "Warm starts").
    actor_start_concurrency: int = Field(default=0, ge=0, le=1024)
    actor_reap_interval_s: float = 10.0
    # Session actors (warm spares included) one node holds at once: the embedded Ray's
    # `chatdf_session` slots (a cluster node: ray start --resources). 0 = from the node's
    # memory, 40 % of it at 128 MiB each (actors/capacity.py). A start past them waits.
    session_actors_per_node: int = Field(default=0, ge=0, le=100_000)
    # While every slot is taken, an edge starting a session asks its least recently used
    # users' actors idle this long (no call, turn or load) to exit early and free theirs.
    actor_pressure_idle_s: float = Field(default=5.0, ge=0)
    # A user's call waits this long for a session to start (a free slot, then the process);
    # past it, 503 "busy, try again" and nothing changed.
    session_start_timeout_s: float = Field(default=60.0, gt=0)
    subscriber_queue_max: int = 10_000  # events queued in the actor for one edge
    subscriber_backpressure: int = 8  # event batches in flight between an actor and one edge
    # Actors on the edge's node stream their events over a Unix socket, not a Ray stream
    # (actors/event_pipe.py: ≈ 1.6 ms of CPU less per item on each side); false: always Ray.
    event_pipe: bool = True
    event_buffer_max: int = 1000  # recent events an actor keeps for edges subscribing late
    event_buffer_s: float = 30.0  # ... and for how long

    # Model
    gemini_api_key: SecretStr = SecretStr("")
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str = ""
    # The provider and its provider-neutral settings (docs/chat.md "Model providers"): with
    # gemini, MODEL_API_KEY / MODEL_NAME / MODEL_BASE_URL override the GEMINI_* ones when set;
    # with openai (any OpenAI-compatible server) only the MODEL_* ones are read.
    model_provider: Literal["gemini", "openai"] = "gemini"
    model_api_key: SecretStr = SecretStr("")
    model_name: str = ""
    model_base_url: str = ""
    llm_max_retries: int = 3
    llm_backoff_s: float = 1.0
    model_read_timeout_s: float = 60.0  # no chunk of a model's stream for this long: it failed
    turn_timeout_s: float = 300.0  # a whole turn (model calls and tools) ends after this
    turn_save_interval_s: float = 2.0  # the streamed part is saved this often (0: at the end)
    max_concurrent_turns_per_user: int = 3  # across conversations; more answer 429
    turn_token_reserve: int = 50_000  # tokens a running turn holds against the budget
    max_tool_calls: int = 5
    max_sql_retries: int = 3
    context_max_messages: int = 50
    context_max_chars: int = 200_000
    max_message_chars: int = 20_000

    # Budgets
    token_limit: int = 5_000_000
    token_window_s: int = DAY_S
    token_warning_ratio: float = 0.8
    usage_prune_interval_s: float = 3600.0

    # Datasets
    max_datasets_per_conversation: int = 5
    dataset_allow_private_hosts: bool = False
    # Comma-separated CIDRs reachable even though private (on-prem data servers), e.g.
    # "10.20.0.0/16,fd00:1::/64"; narrower than dataset_allow_private_hosts.
    dataset_allowed_networks: str = ""
    dataset_connect_timeout_s: float = 10.0
    dataset_read_timeout_s: float = 30.0
    dataset_total_timeout_s: float = 300.0
    dataset_max_bytes: int = 2 * 1024**3
    dataset_cache_dir: str = ""  # empty: <data_dir>/cache
    dataset_cache_max_bytes: int = 10 * 1024**3  # least recently used files evicted past this
    dataset_cache_user_max_bytes: int = 4 * 1024**3  # one user's copies on a node (0: no cap)
    dataset_max_redirects: int = 5
    dataset_ca_bundle: str = ""  # empty: the default trust store; a PEM path: only these CAs

    # SQL
    query_timeout_s: float = 60.0
    query_max_rows: int = 1000
    query_memory_bytes: int = 2 * 1024**3
    max_sql_chars: int = 20_000
    query_max_result_bytes: int = 8 * 1024**2  # the rows' JSON; past it rows are truncated
    query_max_concurrent_per_user: int = 2  # one user's queries at once; more wait their turn
    query_slots_per_node: int = 4  # the embedded Ray's query slots (a cluster: ray start)
    query_queue_timeout_s: float = 120.0  # longest wait for a free query slot
    dataset_load_slots_per_node: int = 8  # the embedded Ray's load slots
    max_concurrent_loads_per_user: int = 5  # one user's loads at once (a full conversation)
    # The embedded Ray kills idle workers only past this many workers in all (actors count):
    # high, so idle task workers (at most the peak of concurrent loads and queries) stay warm.
    idle_workers_kept: int = 10_000
    # The embedded Ray forks its Python workers from a process that has imported Ray and the
    # session actor's modules (docs/architecture.md, "Forked workers"); false: Ray starts each.
    worker_fork_server: bool = True
    # Task workers each edge readies at start (Polars imported, query fork server running).
    warm_task_workers: int = Field(default=4, ge=0, le=256)
    # auto: run each query confined by Landlock where the kernel has it (else warn once);
    # required: refuse to run SQL without it; off: no file/network confinement (docs/sql.md).
    sql_sandbox: Literal["auto", "required", "off"] = "auto"

    # Misc
    log_level: str = "INFO"

    # Observability (docs/observability.md)
    log_format: Literal["human", "json"] = "human"  # json: one object a line, with the ids
    metrics_enabled: bool = True  # GET /metrics on each edge (counts only, no session needed)
    otel_enabled: bool = False  # OpenTelemetry traces of requests and turns, over OTLP/HTTP
    otel_exporter_otlp_endpoint: str = ""  # the standard variable; empty: http://localhost:4318
    otel_service_name: str = "chatdf"
    ray_metrics_export_port: int | None = None  # embedded Ray's metrics port; None: a free one
    public_url: str = ""  # how clients reach this server; empty: http://HOST:PORT

    @property
    def resolved_database_url(self) -> str:
        """The database URL, a relative SQLite path made absolute (Ray workers run elsewhere)."""
        if not self.database_url:
            return f"sqlite:///{(Path(self.data_dir) / 'chatdf.db').resolve()}"
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and not self.database_url.startswith(prefix + "/"):
            rel = self.database_url[len(prefix) :]
            if rel and rel != ":memory:":
                return prefix + str(Path(rel).resolve())
        return self.database_url

    @property
    def resolved_cache_dir(self) -> Path:
        """Node-local directory for downloaded dataset files."""
        return Path(self.dataset_cache_dir or Path(self.data_dir) / "cache").resolve()

    @field_validator("auth_rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("not a rate such as 30/minute or 5/second") from None
        return value

    @field_validator("dataset_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for item in _split(value):
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"not a network in CIDR form ({exc})") from None
        return value

    @property
    def allowed_dataset_networks(self) -> tuple[str, ...]:
        """DATASET_ALLOWED_NETWORKS as a tuple of CIDR strings."""
        return tuple(_split(self.dataset_allowed_networks))

    @property
    def allowed_origins(self) -> list[str]:
        return _split(self.cors_origins)

    @property
    def dev_login_enabled(self) -> bool:
        if self.dev_login is not None:
            return self.dev_login
        return is_loopback_host(self.host)

    @property
    def sample_urls(self) -> frozenset[str]:
        """URLs under which this server offers the bundled sample dataset."""
        hosts = {self.host}
        if is_loopback_host(self.host) or self.host in ("0.0.0.0", "::"):
            hosts |= {"127.0.0.1", "localhost"}
        urls = {f"http://{h}:{self.port}{SAMPLE_PATH}" for h in hosts}
        if self.public_url:
            urls.add(self.public_url.rstrip("/") + SAMPLE_PATH)
        return frozenset(urls)

    def for_tasks(self) -> Settings:
        """A copy for Ray tasks (downloads, SQL): every secret blanked, the database URL too.

        Tasks run next to user SQL; they need limits, the cache location and the fetch guard's
        rules, never a model key, an OAuth secret or database credentials.
        """
        return self.model_copy(
            update={
                "gemini_api_key": SecretStr(""),
                "model_api_key": SecretStr(""),
                "google_client_secret": SecretStr(""),
                "database_url": "",
            }
        )

    @property
    def llm_configured(self) -> bool:
        """Whether chat can run: openai needs a key or a base URL, and a model name."""
        if self.model_provider == "openai":
            reachable = self.model_api_key.get_secret_value() or self.model_base_url
            return bool(reachable and self.model_name)
        return bool(self.resolved_model_api_key)

    @property
    def resolved_model_api_key(self) -> str:
        """The key the configured provider is called with ("" when none)."""
        key = self.model_api_key.get_secret_value()
        if self.model_provider == "openai":
            return key
        return key or self.gemini_api_key.get_secret_value()

    @property
    def resolved_model_name(self) -> str:
        """The model the configured provider is asked for ("" when openai names none)."""
        if self.model_provider == "openai":
            return self.model_name
        return self.model_name or self.gemini_model

    @property
    def resolved_model_base_url(self) -> str:
        """Where the provider is reached; "" means its SDK's default (Google's, OpenAI's)."""
        if self.model_provider == "openai":
            return self.model_base_url
        return self.model_base_url or self.gemini_base_url


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
