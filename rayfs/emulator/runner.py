"""Start the emulator: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import threading
from types import TracebackType

from aiohttp import web

from .datasets import DATASETS, install_dataset
from .credentials import DEMO_CLIENT_ID, DEMO_TOKEN
from .server import build_app
from .state import EmulatorState

logger = logging.getLogger(__name__)

# How long run_in_thread waits for the server to listen, dataset generation included.
START_TIMEOUT_S = 600
# How long stopping waits for requests in flight (a long download) before closing them.
SHUTDOWN_TIMEOUT_S = 5.0


def _prepare_data_dir(data_dir: str | None, dataset: str) -> tuple[str, bool]:
    """Return the data directory to use and whether it is a temporary one."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if data_dir is None:
        return tempfile.mkdtemp(prefix="rayfs-emulator-"), True
    os.makedirs(data_dir, exist_ok=True)
    return os.path.abspath(data_dir), False


def _open_state(data_dir: str, dataset: str) -> EmulatorState:
    """Open the data directory, loading `dataset` only into an empty database."""
    state = EmulatorState(data_dir)
    try:
        if state.store.count() == 0:
            install_dataset(state.store, state.files_dir, dataset)
        else:
            loaded = state.store.get_meta("dataset") or "unknown"
            logger.info("reusing data directory %s (dataset %s, %d records)", data_dir, loaded, state.store.count())
    except BaseException:
        state.close()
        raise
    return state


def _url_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{host}]" if address.version == 6 else host


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


async def _start_site(state: EmulatorState, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        build_app(state), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()

    bound_port = runner.addresses[0][1]
    # A link must name an address a client can reach, which a wildcard is not,
    # so then links take the host from each request.
    state.root_url = None if _is_unspecified(host) else f"http://{_url_host(host)}:{bound_port}"
    return runner, bound_port


class EmulatorHandle:
    """A running emulator in a background thread; `stop()` ends it (also on leaving `with`)."""

    def __init__(self, host: str, port: int, data_dir: str, temporary: bool):
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.root_url = f"http://{_url_host(host)}:{port}"
        self.api_url = f"{self.root_url}/v1.0"
        self._temporary = temporary
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def stop(self) -> None:
        """Stop the server, wait for its thread, and remove a temporary data directory."""
        if self._thread is None:
            return

        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join()
        self._thread = None

        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorHandle(api_url={self.api_url!r}, data_dir={self.data_dir!r})"


def run_in_thread(data_dir: str | None = None, dataset: str = "seed", host: str = "127.0.0.1", port: int = 0) -> EmulatorHandle:
    """Start the emulator in a background thread with its own event loop.

    Returns once the server listens. With `data_dir` None a temporary
    directory is used and removed by `stop()`. Errors while starting (a port
    in use, an unknown dataset) are raised here.
    """
    data_dir, temporary = _prepare_data_dir(data_dir, dataset)
    ready = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        state = None
        try:
            state = _open_state(data_dir, dataset)
            runner, bound_port = loop.run_until_complete(_start_site(state, host, port))
            stop_event = asyncio.Event()
            outcome.update(loop=loop, stop_event=stop_event, port=bound_port)
            ready.set()
            logger.info("emulator started at %s (dataset %s, data %s)", state.root_url or host, dataset, data_dir)

            loop.run_until_complete(stop_event.wait())
            loop.run_until_complete(runner.cleanup())
            logger.info("emulator stopped (port %d)", bound_port)
        except BaseException as exc:
            outcome["error"] = exc
            if not ready.is_set():
                ready.set()
            else:
                logger.exception("emulator thread failed")
        finally:
            if state is not None:
                state.close()
            loop.close()

    thread = threading.Thread(target=run, name="rayfs-emulator", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_S) or "error" in outcome:
        thread.join(timeout=5)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
        error = outcome.get("error")
        if isinstance(error, BaseException):
            raise error
        raise TimeoutError(f"the emulator did not start within {START_TIMEOUT_S} s")

    handle = EmulatorHandle(host, int(outcome["port"]), data_dir, temporary)
    handle._loop = outcome["loop"]  # type: ignore[assignment]
    handle._stop_event = outcome["stop_event"]  # type: ignore[assignment]
    handle._thread = thread
    return handle


def serve(host: str = "127.0.0.1", port: int = 8080, data_dir: str | None = None, dataset: str = "demo") -> None:
    """Run the emulator in the foreground until SIGINT or SIGTERM.

    Prints one line with the API URL and the demo credentials once the server
    listens. A temporary data directory (`data_dir` None) is removed on exit.
    """
    data_dir, temporary = _prepare_data_dir(data_dir, dataset)
    try:
        asyncio.run(_serve(host, port, data_dir, dataset))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _serve(host: str, port: int, data_dir: str, dataset: str) -> None:
    loop = asyncio.get_running_loop()
    state = await loop.run_in_executor(None, _open_state, data_dir, dataset)
    try:
        runner, bound_port = await _start_site(state, host, port)

        stop_event = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop_event.set)

        print(
            f"rayfs emulator: serving dataset {dataset} at http://{_url_host(host)}:{bound_port}/v1.0 "
            f"(token {DEMO_TOKEN}, client id {DEMO_CLIENT_ID})",
            flush=True,
        )
        logger.info("emulator started on port %d (dataset %s, data %s)", bound_port, dataset, data_dir)

        await stop_event.wait()
        await runner.cleanup()
        logger.info("emulator stopped (port %d)", bound_port)
    finally:
        state.close()
