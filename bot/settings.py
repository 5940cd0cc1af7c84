"""The host's configuration: one `Settings` object read once from the environment and `.env`.

Every name here is documented, with its default, in `.env.example`. Nothing else in the project
reads the environment; `bot/__main__.py` passes the values down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid-xt"
Device = Literal["auto", "cuda", "cpu"]
MemoryMode = Literal["auto", "fast", "full", "offload", "offload_chunked", "sequential"]
Period = Literal["hour", "day", "week"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
QueueBackend = Literal["local", "redis"]
FastDType = Literal["float16", "bfloat16"]
# CUDA-graph modes are left out until they are measured with draft quality's kept feature.
CompileMode = Literal["max-autotune-no-cudagraphs", "default"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Discord
    discord_token: SecretStr | None = None
    discord_api_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"

    # Model and GPU
    svd_model: str = DEFAULT_MODEL
    resolution: int = Field(default=1024, ge=256, le=2048)
    device: Device = "auto"
    memory_mode: MemoryMode = "auto"
    hf_offline: bool = False
    # The fast plan (GPUs with room): its dtype, how hard inductor tunes, and where compiled
    # kernels are kept across restarts (empty: DATA_DIR/compile-cache; "off": torch's temp folder).
    fast_dtype: FastDType = "float16"
    compile_mode: CompileMode = "max-autotune-no-cudagraphs"
    compile_cache_dir: str = ""

    # Storage
    database_path: Path = Path("./data/bot.sqlite3")
    data_dir: Path = Path("./data")
    # Pictures and clips of finished jobs (for Re-roll / More / Less motion), then the jobs'
    # records (who asked for what, where, with which settings).
    keep_files_days: float = Field(default=7.0, gt=0)
    keep_history_days: float = Field(default=90.0, gt=0)
    # New clips are refused with less free space than this where DATA_DIR is.
    min_free_disk_mb: float = Field(default=256.0, ge=0)

    # Quotas and queue
    default_quota: int | None = Field(default=5, ge=0)
    default_quota_period: Period = "day"
    max_jobs_per_user: int = Field(default=2, ge=1)
    max_waiting: int = Field(default=50, ge=1)
    default_max_steps: int = Field(default=30, ge=1, le=50)
    job_timeout_seconds: float = Field(default=600.0, gt=0)
    # A clip whose engine call has not returned this long after its time limit means a wedged
    # GPU: the bot exits (code 75) for its supervisor to restart it. None: wait for ever.
    stuck_restart_seconds: float | None = Field(default=120.0, gt=0)
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)

    # Scale-out: GPU workers on other machines (see README, "Several GPUs")
    queue_backend: QueueBackend = "local"
    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: str = Field(default="svd", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    redis_reclaim_seconds: float | None = Field(default=None, gt=0)
    worker_name: str | None = None
    worker_gpu: int | None = Field(default=None, ge=0)

    # Input limits
    max_image_mb: float = Field(default=25.0, gt=0)
    max_image_megapixels: float = Field(default=40.0, gt=0)

    # Operations
    log_level: LogLevel = "INFO"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator(
        "default_quota",
        "metrics_port",
        "redis_reclaim_seconds",
        "stuck_restart_seconds",
        "worker_name",
        "worker_gpu",
        mode="before",
    )
    @classmethod
    def _empty_or_unlimited_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "unlimited"}:
            return None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError("must be a multiple of 64 (for example 1024, 768 or 512)")
        return value

    @model_validator(mode="after")
    def _models_present(self) -> Settings:
        if not self.models:
            raise ValueError("SVD_MODEL must name at least one model (hub id or folder)")
        return self

    @model_validator(mode="after")
    def _reclaim_after_the_longest_job(self) -> Settings:
        if (
            self.redis_reclaim_seconds is not None
            and self.redis_reclaim_seconds <= self.job_timeout_seconds
        ):
            raise ValueError(
                "REDIS_RECLAIM_SECONDS must be longer than JOB_TIMEOUT_SECONDS, or a job still "
                "running would be handed to a second worker"
            )
        return self

    @property
    def reclaim_seconds(self) -> float:
        """How long a job message may stay unacknowledged before another worker takes it: past
        the longest job (generation and encoding each have JOB_TIMEOUT_SECONDS) plus loading."""
        if self.redis_reclaim_seconds is not None:
            return self.redis_reclaim_seconds
        return 2 * self.job_timeout_seconds + 120

    @property
    def models(self) -> list[str]:
        """The configured models; the first is the default."""
        return [m.strip() for m in self.svd_model.split(",") if m.strip()]

    @property
    def compile_cache_path(self) -> Path | None:
        value = self.compile_cache_dir.strip()
        if value.lower() in {"off", "none"}:
            return None
        return Path(value) if value else self.data_dir / "compile-cache"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"


class SettingsError(Exception):
    """Settings that cannot be used; the message is one line per problem, for the host."""


_TOKEN_HELP = (
    "DISCORD_TOKEN is not set. Create an application at "
    "https://discord.com/developers/applications, open Bot → Reset Token, "
    "and put the token in .env as DISCORD_TOKEN=... (see .env.example)."
)


def unknown_names(env_file: Path = Path(".env")) -> list[str]:
    """The names in `env_file` that are no setting (a typo: `MEMORY_MOD`), each with the
    setting it most likely meant; pydantic-settings ignores them without a word."""
    from difflib import get_close_matches

    from dotenv import dotenv_values

    if not env_file.is_file():
        return []
    known = [name.upper() for name in Settings.model_fields]
    found = []
    for name in dotenv_values(env_file):
        if name.upper() in known:
            continue
        guess = get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        found.append(f"{name} (did you mean {guess[0]}?)" if guess else name)
    return found


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`; turn pydantic's errors into plain lines."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
        message = error["msg"]
        if error["type"] == "literal_error":
            allowed = error.get("ctx", {}).get("expected", "")
            message = f"got {error['input']!r}; allowed values: {allowed}"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "Invalid settings: " + "; ".join(lines)


def require_token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise SettingsError(_TOKEN_HELP)
    return settings.discord_token.get_secret_value().strip()
