"""Settings and the `python -m bot` entry: clear one-line answers instead of tracebacks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.logs import FORMAT, ContextFilter, RedactingFormatter
from bot.settings import SettingsError, load_settings, require_token

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "SVD_"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "DATABASE_PATH": str(tmp_path / "db.sqlite3")})
    env.update(extra)
    return env


def _run_bot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # cwd is tmp_path so no developer's .env leaks into the test.
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp_path,
        env={**_clean_env(tmp_path, **env), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_defaults_match_the_documentation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.models == ["stabilityai/stable-video-diffusion-img2vid-xt"]
    assert settings.resolution == 1024
    assert settings.memory_mode == "auto"
    assert settings.database_path == Path("data/bot.sqlite3")
    assert settings.default_quota == 5
    assert (settings.keep_files_days, settings.keep_history_days) == (7, 90)


def test_the_fast_plans_settings_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.app import build_engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    # Kept on the data volume by default, so a new container finds the compiled kernels.
    engine = build_engine(load_settings(), device="cpu")
    assert engine.plan_settings.compile_cache_dir == str(tmp_path / "data" / "compile-cache")
    assert engine.plan_settings.compile_mode == "max-autotune-no-cudagraphs"
    assert engine.plan_settings.auto_compile  # a bot's many clips pay the compile back

    monkeypatch.setenv("COMPILE_CACHE_DIR", "off")
    monkeypatch.setenv("FAST_DTYPE", "bfloat16")
    monkeypatch.setenv("COMPILE_MODE", "default")
    engine = build_engine(load_settings(), device="cpu")
    assert engine.plan_settings.compile_cache_dir is None
    assert (engine.plan_settings.fast_dtype, engine.plan_settings.compile_mode) == (
        "bfloat16",
        "default",
    )
    monkeypatch.setenv("COMPILE_CACHE_DIR", str(tmp_path / "kernels"))
    assert load_settings().compile_cache_path == tmp_path / "kernels"

    # CUDA graphs are not offered until they are measured with draft quality.
    monkeypatch.setenv("COMPILE_MODE", "reduce-overhead")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "COMPILE_MODE" in str(info.value)


def test_check_says_where_compiled_kernels_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.doctor import compile_cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPILE_CACHE_DIR", str(tmp_path / "kernels"))
    found = compile_cache(load_settings())
    assert found.ok and str(tmp_path / "kernels") in found.detail and "0 MiB" in found.detail
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("COMPILE_CACHE_DIR", str(tmp_path / "blocked" / "kernels"))
    found = compile_cache(load_settings())
    # A slower start, not a reason to refuse one.
    assert not found.ok and not found.fatal and "compile at each start" in found.detail
    monkeypatch.setenv("COMPILE_CACHE_DIR", "off")
    assert "off" in compile_cache(load_settings()).detail


def test_every_setting_is_documented_in_env_example() -> None:
    from bot.settings import Settings

    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {name.upper() for name in Settings.model_fields} == documented


def test_several_models_first_is_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SVD_MODEL", " a/xt , ./local-svd ")
    assert load_settings().models == ["a/xt", "./local-svd"]


def test_bad_value_names_the_setting_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMORY_MODE", "banana")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "MEMORY_MODE" in str(info.value)
    assert "'offload'" in str(info.value) and "banana" in str(info.value)


def test_missing_token_says_where_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"discord\.com/developers"):
        require_token(load_settings())


def test_run_without_token_exits_with_one_line(tmp_path: Path) -> None:
    result = _run_bot(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr


def test_run_with_bad_setting_exits_with_one_line(tmp_path: Path) -> None:
    result = _run_bot(tmp_path, DISCORD_TOKEN="x", MEMORY_MODE="banana")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "MEMORY_MODE" in result.stderr and "sequential" in result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("DATABASE_PATH", "{tmp}", "is a folder"),
        ("DATABASE_PATH", "/proc/nope/bot.sqlite3", "not writable"),
        ("DATA_DIR", "/proc/nope", "not writable"),
        ("SVD_MODEL", "./no-such-model", "does not exist"),
    ],
)
def test_a_setting_that_cannot_work_stops_the_start_with_a_line_naming_it(
    tmp_path: Path, setting: str, value: str, said: str
) -> None:
    result = _run_bot(tmp_path, DISCORD_TOKEN="x", **{setting: value.format(tmp=tmp_path)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    first, hint = result.stderr.strip().splitlines()
    assert setting in first and said in first, first
    assert "check` lists everything" in hint or "check lists everything" in hint  # either host


def test_check_runs_on_a_cpu_host_and_never_prints_the_token(tmp_path: Path) -> None:
    secret = "MTIz.secret-token-value"
    result = _run_bot(tmp_path, "check", DISCORD_TOKEN=secret, HF_OFFLINE="false")
    out = result.stdout
    assert secret not in out + result.stderr
    assert "no CUDA GPU" in out
    assert "Memory plan" in out
    assert "downloads about 10 GB" in out
    assert "Database" in out and "writable" in out
    assert "Discord token" in out and "set (" in out
    assert result.returncode == 0


def test_token_is_redacted_from_logs() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("abc.TOKEN",), None)
    ContextFilter(("abc.TOKEN",)).filter(record)
    assert record.getMessage() == "got [token]"


def test_token_is_redacted_from_tracebacks_too() -> None:
    try:
        raise RuntimeError("Authorization: Bot abc.TOKEN refused")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    ContextFilter(("abc.TOKEN",)).filter(record)
    text = RedactingFormatter(FORMAT, ("abc.TOKEN",)).format(record)
    assert "abc.TOKEN" not in text and "Bot [token] refused" in text and "Traceback" in text


def test_interaction_tokens_in_urls_are_redacted() -> None:
    # aiohttp names the URL in its connection errors; an interaction's token lets anyone post as
    # the bot in that channel for 15 minutes.
    error = (
        "Connection timeout to host https://discord.com/api/v10/webhooks/1234/aW50ZXJhY3Rpb24.x-y_z"
        "?wait=1 after /interactions/99/aW50ZXJhY3Rpb24.x-y_z/callback"
    )
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "refused: %s", (error,), None)
    ContextFilter().filter(record)
    message = record.getMessage()
    assert "aW50ZXJhY3Rpb24" not in message
    assert "/webhooks/1234/[token]?wait=1" in message
    assert "/interactions/99/[token]/callback" in message


def test_logging_hides_a_token_read_with_a_trailing_newline_and_sql_parameters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bot.logs import configure_logging

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "abc.TOKEN\n")  # a secret mounted from a file
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    root = logging.getLogger()
    kept = root.handlers[:], root.level, logging.getLogger("aiosqlite").level
    try:
        configure_logging(load_settings())
        (handler,) = root.handlers
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "sent Bot abc.TOKEN", (), None)
        assert all(f.filter(record) for f in handler.filters)
        assert "abc.TOKEN" not in handler.format(record)
        # aiosqlite logs each statement with its parameters (a job's interaction token) at DEBUG.
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level, sqlite_level = kept
        root.setLevel(level)
        logging.getLogger("aiosqlite").setLevel(sqlite_level)


def test_a_started_bot_logs_no_voice_warnings_it_has_no_use_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    import discord

    from bot.client import BotConfig, SvdBot

    for flag in ("warn_nacl", "warn_dave"):
        monkeypatch.setattr(discord.VoiceClient, flag, True)  # as without PyNaCl and davey

    async def nothing(*_args: object) -> None:
        return None

    service = SimpleNamespace(set_progress_message=nothing, job=nothing, set_clip_message=nothing)
    with caplog.at_level(logging.WARNING, logger="discord"):
        SvdBot(service=service, config=BotConfig(models=["m"]), reencode=lambda p, _n: p)  # type: ignore[arg-type]
    assert not [r for r in caplog.records if "voice will NOT be supported" in r.getMessage()]


def test_a_setting_that_stops_the_bot_says_where_to_fix_it_in_docker_and_out(
    tmp_path: Path,
) -> None:
    from bot.__main__ import _where_to_fix

    bare = _where_to_fix(tmp_path / "no-dockerenv")
    assert "./run.sh check" in bare and "docker" not in bare
    (tmp_path / ".dockerenv").write_text("")
    contained = _where_to_fix(tmp_path / ".dockerenv")
    assert "docker compose run --rm bot check" in contained and "./run.sh" not in contained
