"""The `rayfs` command: mount, unmount, status, demo and emulator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rayfs import __version__, runner
from rayfs.config import Settings, cache_home, load_settings
from rayfs.errors import ConfigError, RayfsError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEMO_MOUNTPOINT = Path.home() / "rayteams-demo"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2

    try:
        return args.handler(args)
    except (RayfsError, ConfigError) as exc:
        print(f"rayfs: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output went away (`rayfs status | head -1`), so stop quietly.
        # Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A folder or file the user named cannot be used: one line, not a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"rayfs: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayfs", description="Mount a RAYTeams account as folders.")
    parser.add_argument("--version", action="version", version=f"rayfs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount an account (returns once the mount serves)")
    mount.add_argument("mountpoint", type=Path, help="an empty folder to mount on")
    add_settings_arguments(mount)
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground (for systemd)")
    mount.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPT[,OPT...]",
                       help="FUSE mount options, e.g. allow_other; nonempty allows a non-empty mount point")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(handler=command_mount)

    unmount = commands.add_parser("unmount", help="wait for pending uploads, then unmount")
    unmount.add_argument("mountpoint", type=Path)
    unmount.add_argument("--no-wait", action="store_true",
                         help="unmount now; pending uploads stay in the spool for the next mount")
    unmount.set_defaults(handler=command_unmount)

    status = commands.add_parser("status", help="list this user's mounts and their pending uploads")
    status.add_argument("mountpoint", type=Path, nargs="?")
    status.set_defaults(handler=command_status)

    demo = commands.add_parser("demo", help="run the emulator with demo data and mount it, until Ctrl-C")
    demo.add_argument("mountpoint", type=Path, nargs="?", default=DEMO_MOUNTPOINT,
                      help=f"where to mount (default {DEMO_MOUNTPOINT})")
    demo.add_argument("--dataset", choices=["demo", "seed", "empty"], default="demo")
    demo.set_defaults(handler=command_demo)

    emulator = commands.add_parser("emulator", help="run the RAYTeams-compatible test server")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emulator.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free port")
    emulator.add_argument("--data", type=Path, help="folder for the SQLite store and files (default: a temporary folder)")
    emulator.add_argument("--dataset", choices=["demo", "seed", "empty"], default="demo",
                          help="records loaded into an empty store (default demo)")
    emulator.add_argument("--debug", action="store_true", help="log every request")
    emulator.set_defaults(handler=command_emulator)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; each also has a RAYFS_* variable and a config-file key."""
    api = parser.add_mutually_exclusive_group()
    api.add_argument("--api-url", help="API base URL, e.g. http://127.0.0.1:8080/v1.0 (RAYFS_API_URL)")
    api.add_argument("--region", help="RAYTeams region, e.g. ap-northeast-2 (RAYFS_REGION)")
    parser.add_argument("--client-id", help="your app's client id, sent as x-rayteams-client-id (RAYFS_CLIENT_ID)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="access token; prefer --token-file, as others can see flags (RAYFS_TOKEN)")
    token.add_argument("--token-file", help="file whose first line is the access token (RAYFS_TOKEN_FILE)")
    parser.add_argument("--auth-scheme", choices=["Bearer", "token", ""],
                        help="how the token is sent: 'Bearer' (default), '' for a bare token, 'token' for a token header")
    parser.add_argument("--metadata-ttl", type=float, help="seconds to keep listings and records (default 60)")
    parser.add_argument("--cache-dir", help="folder for cached attachment bytes and the log (default ~/.cache/rayfs/ACCOUNT)")
    parser.add_argument("--cache-max-size", help="disk space for cached attachment bytes, e.g. 10G (default 10G)")
    parser.add_argument("--log-file", help="log file (default CACHE_DIR/mount.log in the background, stderr with -f)")
    parser.add_argument("--spool-dir", help="folder for files waiting for upload (default CACHE_DIR/spool)")
    parser.add_argument("--write-back", type=float,
                        help="seconds to wait after a new file is closed before uploading it (default 2)")
    parser.add_argument("--debug", dest="log_level", action="store_const", const="DEBUG",
                        help="log every FUSE operation and HTTP request")


def settings_from(args: argparse.Namespace) -> Settings:
    keys = ("api_url", "region", "client_id", "token", "token_file", "auth_scheme", "metadata_ttl",
            "cache_dir", "cache_max_size", "log_file", "log_level", "spool_dir", "write_back")
    flags: dict[str, Any] = {key: getattr(args, key, None) for key in keys}
    if flags["api_url"]:
        flags["region"] = ""
    elif flags["region"]:
        flags["api_url"] = ""
    if flags["token"]:
        flags["token_file"] = ""
    elif flags["token_file"]:
        flags["token"] = ""
    return load_settings(flags)


def configure_logging(level: str, log_file: str, *, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = []
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    if to_stderr or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)
    # urllib3 logs every URL at DEBUG, download links included: keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # mfusepy logs its callback table at DEBUG on every mount.
    logging.getLogger("fuse").setLevel(logging.INFO)


# Commands


def command_mount(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    runner.require_settings(settings)
    # Resolved once, before mounting: afterwards resolving it would ask the mount itself.
    mountpoint = args.mountpoint.expanduser().resolve()
    fuse_options = runner.parse_fuse_options(args.fuse_options)

    if args.foreground:
        return serve_foreground(settings, mountpoint, fuse_options, ready_fd=args.ready_fd)

    runner.check_mountpoint(mountpoint, allow_nonempty="nonempty" in fuse_options)
    count = runner.check_credentials(settings)
    runner.start_background(settings, mountpoint, args.fuse_options)
    print(f"rayfs: mounted {count} projects at {mountpoint} (log: {settings.log_file})")
    return 0


def serve_foreground(settings: Settings, mountpoint: Path, fuse_options: dict[str, Any], *, ready_fd: int | None) -> int:
    """Serve the mount in this process until it is unmounted and its uploads are done."""
    from rayfs.mount import RayfsOperations, run_fuse
    from rayfs.store import Store
    from rayfs.tree import Tree
    from rayfs.uploads import MtimeStore, UploadManager

    configure_logging(settings.log_level, settings.log_file, to_stderr=ready_fd is None)
    try:
        if ready_fd is None:
            runner.check_mountpoint(mountpoint, allow_nonempty="nonempty" in fuse_options)
            runner.check_credentials(settings)
        client = runner.make_client(settings)
        cache_dir = settings.resolved_cache_dir()
        store = Store(
            client,
            cache_dir=cache_dir,
            account=settings.account_key(),
            metadata_ttl=settings.metadata_ttl,
            content_max_bytes=settings.cache_max_bytes(),
        )
        mtimes = MtimeStore(cache_dir / "mtimes.sqlite3")
        # The upload manager retries with its own backoff; client retries under it would resend whole files.
        upload_client = runner.make_client(settings, max_retries=0)
        uploads = UploadManager(
            upload_client,
            settings.resolved_spool_dir(),
            mtimes=mtimes,
            write_back=settings.write_back,
            on_uploaded=lambda staged, attachment: store.invalidate_project(staged.project_id),
            status_file=runner.upload_status_file(mountpoint),
        )
    except (RayfsError, OSError) as exc:
        message = str(exc) if isinstance(exc, RayfsError) else f"cannot use {exc.filename}: {exc.strerror or exc}"
        logger.error("%s", message)
        runner.report_ready(ready_fd, f"{message}\n".encode())
        raise

    stopping = threading.Event()

    def on_ready() -> None:
        runner.write_state(mountpoint, settings)
        threading.Thread(
            target=runner.watch_upload_requests,
            args=(mountpoint, uploads.wait_idle, stopping.is_set),
            name="upload requests",
            daemon=True,
        ).start()
        runner.report_ready(ready_fd)

    def on_destroy() -> None:
        stopping.set()
        wait = not runner.no_wait_flag(mountpoint).exists()
        pending = uploads.pending()
        if pending and wait:
            logger.info("unmounted; finishing %d pending upload(s) before exiting", len(pending))
        elif pending:
            logger.info("unmounted; leaving %d pending upload(s) in %s for the next mount", len(pending), settings.resolved_spool_dir())
        uploads.close(wait=wait)
        mtimes.close()

    operations = RayfsOperations(
        Tree(store, uploads=uploads, mtimes=mtimes),
        store,
        uploads,
        on_ready=on_ready,
        on_destroy=on_destroy,
        spool_dir=str(settings.resolved_spool_dir()),
    )
    options = {key: value for key, value in fuse_options.items() if key not in runner.OWN_OPTIONS}
    logger.info("mounting %s at %s", settings.resolved_api_url(), mountpoint)
    try:
        run_fuse(operations, str(mountpoint), options=options)
    except RuntimeError as exc:
        logger.error("FUSE failed to mount %s: %s", mountpoint, exc)
        runner.report_ready(ready_fd, f"FUSE failed to mount {mountpoint}: {exc}\n".encode())
        uploads.close(wait=False)
        return 1
    finally:
        client.close()
        upload_client.close()
        runner.remove_state(mountpoint)
    logger.info("stopped serving %s", mountpoint)
    return 0


def command_unmount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.expanduser().resolve()
    runner.unmount(mountpoint, wait=not args.no_wait, report=lambda text: print(f"rayfs: {text}", flush=True))
    print(f"rayfs: unmounted {mountpoint}")
    return 0


def command_status(args: argparse.Namespace) -> int:
    requested = str(args.mountpoint.expanduser().resolve()) if args.mountpoint else None
    states = [state for state in runner.read_states() if requested in (None, state.get("mountpoint"))]
    if not states:
        print("rayfs: no mounts" if requested is None else f"rayfs: {requested} is not mounted by rayfs")
        return 0 if requested is None else 1

    all_alive = True
    for state in states:
        mountpoint = Path(state.get("mountpoint", ""))
        alive = runner.process_alive(int(state.get("pid", 0))) and runner.is_mounted(mountpoint)
        all_alive = all_alive and alive
        print(f"{mountpoint}: {'mounted' if alive else 'not running'}, "
              f"API {state.get('api_url')}, pid {state.get('pid')}, log {state.get('log_file')}")
        if not alive and runner.is_mounted(mountpoint):
            print(f"  the mount process has ended: run `rayfs unmount {mountpoint}`, then mount again")
        uploads = runner.read_upload_status(mountpoint)
        if not uploads:
            print("  no pending uploads")
        for upload in uploads:
            print(f"  {runner.describe_upload(upload)}")
    return 0 if all_alive or requested is None else 1


def command_emulator(args: argparse.Namespace) -> int:
    from rayfs.emulator import serve

    configure_logging("DEBUG" if args.debug else "INFO", "", to_stderr=True)
    serve(host=args.host, port=args.port, data_dir=args.data, dataset=args.dataset)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """Run the emulator with demo data in this process and mount it until Ctrl-C."""
    from rayfs.emulator import DEMO_CLIENT_ID, DEMO_TOKEN, run_in_thread

    configure_logging("WARNING", "", to_stderr=True)
    mountpoint = args.mountpoint.expanduser().absolute()
    if runner.is_mounted(mountpoint):
        raise runner.MountError(f"{mountpoint} is still mounted: run `rayfs unmount {mountpoint}` first")
    mountpoint = mountpoint.resolve()
    if not mountpoint.exists():
        mountpoint.mkdir(parents=True)
    runner.check_mountpoint(mountpoint, allow_nonempty=False)

    data_dir = cache_home() / f"emulator-{args.dataset}"
    print(f"rayfs demo: starting the RAYTeams emulator with the {args.dataset} dataset "
          f"(the first run writes its files to {data_dir})", flush=True)
    emulator = run_in_thread(data_dir=data_dir, dataset=args.dataset)
    try:
        settings = load_settings({
            "api_url": emulator.api_url,
            "region": "",
            "token": DEMO_TOKEN,
            "token_file": "",
            "client_id": DEMO_CLIENT_ID,
            "cache_dir": str(cache_home() / "demo-mount"),
        })
        runner.check_credentials(settings)
        process = runner.start_background(settings, mountpoint, [])
        print_demo_guide(mountpoint, emulator.api_url, settings.log_file)
        wait_for_stop_signal()
        print("\nrayfs demo: unmounting", flush=True)
        if unmount_patiently(mountpoint):
            process.wait()
    finally:
        emulator.stop()
    print("rayfs demo: stopped", flush=True)
    return 0


def print_demo_guide(mountpoint: Path, api_url: str, log_file: str) -> None:
    print(
        f"""
rayfs demo: the demo account is mounted at {mountpoint}
  API:  {api_url}   (token demo-token, client id rayfs-demo)
  log:  {log_file}

Try, in another terminal:
  ls {mountpoint}
  tree -L 2 {mountpoint}
  cat {mountpoint}/.trash/project-1110201/info.json
  rsync -a {mountpoint}/ /tmp/rayteams-archive/

Press Ctrl-C here to unmount and stop.""",
        flush=True,
    )


def wait_for_stop_signal() -> None:
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signal_number, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def unmount_patiently(mountpoint: Path) -> bool:
    """Unmount, asking the user to close what keeps the mount busy; return False if they gave up."""
    while True:
        try:
            runner.unmount(mountpoint)
            return True
        except runner.MountError as exc:
            if not runner.is_mounted(mountpoint):
                return True
            print(f"rayfs demo: {mountpoint} is busy; close the programs and shells using it. "
                  "Trying again every 2 seconds; press Ctrl-C again to leave it mounted (without the emulator)",
                  flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            if stop.wait(2.0):
                print(f"rayfs demo: left {mountpoint} mounted; run `rayfs unmount {mountpoint}` later", flush=True)
                return False
