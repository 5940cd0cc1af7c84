"""`python -m bot` (or `svd-bot`): run the bot; `sync` registers the slash commands; `worker`
serves clips from Redis on one GPU (QUEUE_BACKEND=redis); `check`
says what this host has and what the bot will do; `health` is the container's health check."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from bot import threads
from bot.logs import configure_logging, redact
from bot.settings import (
    Settings,
    SettingsError,
    load_settings,
    require_token,
    unknown_names,
)

# EX_TEMPFAIL: "try again". Docker's restart policy and systemd's Restart=on-failure start the
# bot again on any code but 0; the number tells a host's own scripts why.
EXIT_RESTART = 75


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="svd-bot", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot (the default)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="only in this server (instant; for testing)")
    sub.add_parser(
        "worker", help="serve clips from Redis on one GPU (QUEUE_BACKEND=redis; one per GPU)"
    )
    sub.add_parser("check", help="what this host has and what the bot would do")
    sub.add_parser("health", help="exit 0 when the running bot is connected and ready")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"svd-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if command == "check":
        from bot.doctor import run_checks

        return run_checks(settings)
    if command == "health":
        from bot.health import healthy

        ok, why = healthy(settings.data_dir / "health.json")
        print(why)
        return 0 if ok else 1
    for name in unknown_names():  # `check` lists them with the rest
        logging.getLogger("bot").warning("%s in .env is not a setting; it is ignored", name)
    if command == "worker":
        return _cannot_start(settings) or _end(_run_worker(settings))
    try:
        token = require_token(settings)
    except SettingsError as exc:
        print(f"svd-bot: {exc}", file=sys.stderr)
        return 2
    return _cannot_start(settings) or _end(_run_async(command, settings, token, args))


def _cannot_start(settings: Settings) -> int:
    """2, after one line per problem, when a setting stops the bot before it could run (rather
    than a traceback from deep inside SQLite or the hub); 0 when it can start."""
    from bot.doctor import startup_problems

    problems = startup_problems(settings)
    for problem in problems:
        print(f"svd-bot: {problem}", file=sys.stderr)
    if problems:
        print(f"svd-bot: {_where_to_fix()}", file=sys.stderr)
    return 2 if problems else 0


def _where_to_fix(docker_marker: Path = Path("/.dockerenv")) -> str:
    # In a container, .env is the host's (read by compose), and ./run.sh check would build a
    # virtual environment on the host and look at it, not at the container.
    if docker_marker.exists():
        return (
            "fix it in .env or docker-compose.yml's environment "
            "(`docker compose run --rm bot check` lists everything)"
        )
    return "fix it in .env (./run.sh check lists everything)"


def _exit_for_restart(program: str, reason: Exception) -> NoReturn:
    """End the process now. A normal exit would join the wedged engine thread at interpreter
    shutdown and hang for ever; everything worth keeping was closed before this is called."""
    logging.getLogger("bot").critical(
        "%s; exiting with code %d so that the bot is started again", reason, EXIT_RESTART
    )
    print(
        f"{program}: {reason}. Exiting with code {EXIT_RESTART}: Docker's restart policy (or "
        "systemd's Restart=on-failure) starts it again; without one, start it again by hand.",
        file=sys.stderr,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_RESTART)


def _end(code: int) -> int:
    """`code`, or, when an engine thread is still inside the GPU (a shutdown gave up on it) or
    a thread of the loop's is stuck (a hung disk, see bot/threads.py), the same code through
    `os._exit`: a normal exit would wait for that thread for ever."""
    from bot.threads import IO_THREAD_PREFIX, busy_threads
    from generation.worker import ENGINE_THREAD_PREFIX

    stuck = busy_threads(ENGINE_THREAD_PREFIX, IO_THREAD_PREFIX, wait=2.0)
    if stuck:
        logging.getLogger("bot").warning(
            "%s never returned; ending the process", ", ".join(t.name for t in stuck)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_worker(settings: Settings) -> int:
    from bot.app import EngineStuck
    from bot.worker import run_worker
    from generation.errors import GenerationError

    try:
        threads.run(run_worker(settings))
        return 0
    except EngineStuck as exc:
        _exit_for_restart("svd-bot worker", exc)
    except GenerationError as exc:
        print(f"svd-bot worker: {exc.user_message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("bot").exception("the worker stopped")
        print(f"svd-bot worker: stopped: {exc}", file=sys.stderr)
        return 1


def _run_async(command: str, settings: Settings, token: str, args: argparse.Namespace) -> int:
    import discord

    from bot.app import EngineStuck, run, sync_commands

    try:
        if command == "sync":
            try:
                names = threads.run(sync_commands(settings, token, args.guild))
            except (discord.Forbidden, discord.NotFound) as exc:
                if args.guild is None:
                    raise
                # 50001 Missing Access or 10004 Unknown Guild: the id, or the invite.
                print(
                    f"svd-bot: Discord would not register the commands in server {args.guild} "
                    f"({exc.text or exc.status}). Check the id (right-click the server → Copy "
                    "Server ID, with Developer Mode on) and that the bot was invited there with "
                    "the applications.commands scope.",
                    file=sys.stderr,
                )
                return 2
            where = f"server {args.guild}" if args.guild else "all servers (may take up to an hour)"
            print(f"Registered {len(names)} commands in {where}: {', '.join(sorted(names))}")
            return 0
        threads.run(run(settings, token))
        return 0
    except EngineStuck as exc:
        _exit_for_restart("svd-bot", exc)
    except discord.LoginFailure:
        print(
            "svd-bot: Discord refused the token. Reset it in the Developer Portal "
            "(Bot → Reset Token) and update DISCORD_TOKEN.",
            file=sys.stderr,
        )
        return 2
    except discord.PrivilegedIntentsRequired:
        print("svd-bot: Discord refused the requested intents.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The full story is in the log; the host gets one line.
        logging.getLogger("bot").exception("the bot stopped")
        print(f"svd-bot: stopped: {redact(str(exc), (token,))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
