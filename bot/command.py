"""What every `parley` command shares: settings or one line and exit 2, async commands run to a clean end on
SIGTERM, and failures from outside (a database, a model, a platform) as one line with an exit code.

Exit codes: 0 done; 1 a failure that may pass (a server that did not answer, a corrupted file to restore);
2 a setting to fix (invalid settings, a database that refuses them, a tool table that does not fit);
143 stopped by SIGTERM; 130 by Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

if TYPE_CHECKING:
    from bot.config import Settings

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line to stderr and return the exit to raise: users see a sentence, never a traceback."""
    typer.echo(f"parley: {message}", err=True)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    from bot.config import SettingsError, load_settings, secret_values

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    from bot.logs import configure_logging

    configure_logging(settings.log.level, format=settings.log.format, secrets=secret_values(settings))
    return settings


class Terminated(Exception):
    """SIGTERM arrived and the command shut down cleanly."""


async def _until_terminated(command: Coroutine[Any, Any, T]) -> T:
    """Run the command; SIGTERM (a deploy, `docker stop`) cancels it so every `async with` unwinds: the
    dispatcher lets running messages finish within its grace period and the database closes."""
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(command)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run_async(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async command; start-up failures (database, model) end with one clear line."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        import asyncio

        try:
            return asyncio.run(_until_terminated(fn(*args, **kwargs)))
        except Terminated:
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
            raise fail(str(exc), code) from None

    return wrapper


def exit_code(exc: Exception) -> int | None:
    """The exit code of a failure from outside, None for a bug (which keeps its traceback).

    The exception types are imported here, on the way out: the model engines pull in DSPy, which a command that
    succeeds without them (`parley db status`) should not pay for."""
    from agent.engines.local import EngineUnavailable
    from agent.ports import PlatformUnavailable
    from agent.storage.errors import StoreError, StoreMisconfigured
    from agent.tools.registry import ToolRegistryError

    if isinstance(exc, StoreMisconfigured | ToolRegistryError):
        return 2
    if isinstance(exc, StoreError | EngineUnavailable | PlatformUnavailable):
        return 1
    return None
