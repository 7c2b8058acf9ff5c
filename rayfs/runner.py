"""Starting and stopping mounts: checks, the background process and its state file.

`rayfs mount` checks the mount point and the credentials in the calling
process, so that every usual mistake ends in one clear line. It then starts
`rayfs mount -f` as a background process and returns once that process's FUSE
`init` callback has reported through a pipe that the mount is serving.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rayfs.api.client import ApiClient
from rayfs.config import Settings, cache_home
from rayfs.errors import ApiError, AuthError, ConfigError, RayfsError, TransportError
from rayfs.uploads.staged import is_temporary_name

logger = logging.getLogger(__name__)

READY_MESSAGE = b"ready\n"

# How long `rayfs mount` waits for the background process to report ready,
# and `rayfs unmount` for it to exit. Both only bound a wait that normally
# takes well under a second, so a broken FUSE setup cannot hang the command.
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0

# Options rayfs handles itself instead of passing them to libfuse.
OWN_OPTIONS = {"nonempty"}


class MountError(RayfsError):
    """The mount could not start; the message is the one line shown to the user."""


def parse_fuse_options(texts: list[str]) -> dict[str, Any]:
    """Turn `-o a,b=c` values into keyword arguments for `mfusepy.FUSE`."""
    options: dict[str, Any] = {}
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            options[key.strip()] = value if sep else True
    return options


def is_mounted(path: Path) -> bool:
    """Return True when `path` is a mount point, also one whose FUSE process has died.

    `os.path.ismount` cannot tell: stat of a dead FUSE mount fails with ENOTCONN.
    """
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
            for line in mounts:
                fields = line.split(" ")
                if len(fields) > 1 and unescape_mount_path(fields[1]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def unescape_mount_path(text: str) -> str:
    """Decode the octal escapes (`\\040` for a space) of /proc/self/mounts."""
    raw = text.encode("utf-8", "surrogateescape")
    decoded = bytearray()
    index = 0
    while index < len(raw):
        if raw[index : index + 1] == b"\\" and raw[index + 1 : index + 4].isdigit():
            decoded.append(int(raw[index + 1 : index + 4], 8))
            index += 4
        else:
            decoded += raw[index : index + 1]
            index += 1
    return decoded.decode("utf-8", "surrogateescape")


def check_mountpoint(path: Path, *, allow_nonempty: bool) -> None:
    """Raise MountError with the fix when `path` cannot be mounted on."""
    if is_mounted(path):
        raise MountError(f"{path} is already a mount point: unmount it first with `rayfs unmount {path}`")
    if not path.exists():
        raise MountError(f"mount point {path} does not exist: create it with `mkdir -p {path}`")
    if not path.is_dir():
        raise MountError(f"mount point {path} is not a folder")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise MountError(f"mount point {path} is not writable by you: choose a folder you own")
    if not allow_nonempty and any(path.iterdir()):
        raise MountError(f"mount point {path} is not empty: choose an empty folder, or pass -o nonempty")
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available (/dev/fuse is missing): install fuse3, e.g. `sudo apt-get install fuse3`")
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        raise MountError("fusermount3 was not found: install fuse3, e.g. `sudo apt-get install fuse3`")


def make_client(settings: Settings, **overrides: Any) -> ApiClient:
    return ApiClient(
        settings.resolved_api_url(),
        settings.resolved_token(),
        settings.client_id,
        auth_scheme=settings.auth_scheme,
        **overrides,
    )


def check_credentials(settings: Settings) -> int:
    """Ask the API for the project list once; return the number of projects or raise MountError."""
    url = settings.resolved_api_url()
    client = make_client(settings, max_retries=1)
    try:
        return len(client.list_projects())
    except AuthError as exc:
        raise MountError(
            f"the RAYTeams API at {url} rejected the credentials (HTTP {exc.status}): check --token and --client-id"
        ) from exc
    except TransportError as exc:
        raise MountError(f"cannot reach the RAYTeams API at {url}: {exc}") from exc
    except ApiError as exc:
        raise MountError(f"the RAYTeams API at {url} returned an unexpected response: {exc}") from exc
    finally:
        client.close()


def settings_environment(settings: Settings) -> dict[str, str]:
    """Return the environment that hands `settings` to a child process (tokens stay out of argv)."""
    environment = dict(os.environ)
    for key, value in vars(settings).items():
        environment["RAYFS_" + key.upper()] = str(value)
    # The child must read exactly these settings, not the config file again.
    environment["RAYFS_CONFIG"] = os.devnull
    return environment


def default_log_file(settings: Settings) -> Path:
    return settings.resolved_cache_dir() / "mount.log"


def start_background(settings: Settings, mountpoint: Path, fuse_options: list[str]) -> subprocess.Popen:
    """Start `rayfs mount -f` in the background and return once it serves, or raise MountError."""
    log_file = Path(settings.log_file) if settings.log_file else default_log_file(settings)
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MountError(f"cannot create the folder of log file {log_file}: {exc.strerror}; pass --log-file or --cache-dir") from exc
    settings.log_file = str(log_file)

    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "rayfs", "mount", str(mountpoint), "-f", "--ready-fd", str(write_end)]
    for option in fuse_options:
        command += ["-o", option]

    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "ab") as devnull_out:
        process = subprocess.Popen(
            command,
            env=settings_environment(settings),
            stdin=devnull_in,
            stdout=devnull_out,
            stderr=devnull_out,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)

    try:
        message = _read_ready(read_end, process)
    finally:
        os.close(read_end)

    if message == READY_MESSAGE:
        return process

    if process.poll() is None:
        process.terminate()
    detail = message.decode(errors="replace").strip() or last_error_line(log_file)
    raise MountError(f"the mount did not start: {detail} (log: {log_file})")


def _read_ready(read_end: int, process: subprocess.Popen) -> bytes:
    deadline = time.monotonic() + READY_TIMEOUT
    received = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], 0.2)
        if readable:
            chunk = os.read(read_end, 4096)
            if not chunk:
                return received
            received += chunk
            if received.endswith(b"\n"):
                return received
        elif process.poll() is not None and not received:
            return b""
    return b"timed out waiting for FUSE to start\n"


def last_error_line(log_file: Path) -> str:
    """Return the last ERROR or CRITICAL line of a log file, for a one-line failure message."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "the mount process exited"
    for line in reversed(lines[-200:]):
        if " ERROR " in line or " CRITICAL " in line:
            return line.split(": ", 1)[-1]
    return "the mount process exited"


def report_ready(ready_fd: int | None, message: bytes = READY_MESSAGE) -> None:
    """Tell the waiting `rayfs mount` that the mount serves (or why it does not)."""
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, message)
        os.close(ready_fd)
    except OSError as exc:
        logger.warning("could not report to the starting process: %s", exc)


# Mount state files: which process serves which mount point.


def state_dir() -> Path:
    return cache_home() / "mounts"


def state_file(mountpoint: Path) -> Path:
    """Return the state file of a mount point, which must be an absolute path without symlinks.

    The path is not resolved here, because resolving a mounted path sends a
    request to the mount itself, which deadlocks inside the mount's own `init` callback.
    """
    name = str(mountpoint).encode().hex()[-120:]
    return state_dir() / f"{name}.json"


def write_state(mountpoint: Path, settings: Settings) -> None:
    path = state_file(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "mountpoint": str(mountpoint),
        "pid": os.getpid(),
        "api_url": settings.resolved_api_url(),
        "log_file": settings.log_file,
        "started": time.time(),
    }
    path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def read_states() -> list[dict[str, Any]]:
    states = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            states.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return states


def remove_state(mountpoint: Path) -> None:
    for path in (state_file(mountpoint), upload_status_file(mountpoint), no_wait_flag(mountpoint), upload_now_flag(mountpoint)):
        path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Return True while process `pid` runs; a zombie (exited, not yet reaped) counts as ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            return stat_file.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def upload_status_file(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".uploads")


def no_wait_flag(mountpoint: Path) -> Path:
    return state_file(mountpoint).with_suffix(".nowait")


def upload_now_flag(mountpoint: Path) -> Path:
    """Return the flag file that requests the mount process to upload every staged file now."""
    return state_file(mountpoint).with_suffix(".upload-now")


def watch_upload_requests(mountpoint: Path, upload_now: Callable[[], None], stop: Callable[[], bool]) -> None:
    """Call `upload_now` whenever `rayfs unmount` creates the upload-now flag; runs in the mount process."""
    flag = upload_now_flag(mountpoint)
    while not stop():
        if flag.exists():
            flag.unlink(missing_ok=True)
            logger.info("rayfs unmount asked to upload every staged file now")
            upload_now()
        time.sleep(0.5)


def read_upload_status(mountpoint: Path) -> list[dict[str, Any]]:
    """Return the uploads that the mount at `mountpoint` last reported, or [] when it reported none."""
    try:
        status = json.loads(upload_status_file(mountpoint).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    uploads = status.get("uploads") if isinstance(status, dict) else None
    return [upload for upload in uploads or [] if isinstance(upload, dict)]


def describe_upload(upload: dict[str, Any]) -> str:
    size = int(upload.get("size") or 0)
    sent = int(upload.get("sent") or 0)
    state = upload.get("state", "?")
    reason = upload.get("reason") or ""
    if is_temporary_name(str(upload.get("name", ""))):
        state = "held: an rsync temporary file, uploaded only once renamed"
    elif state == "uploading" and size:
        state = f"uploading {100 * sent // size}%"
    elif state == "failed":
        state = f"failed: {reason}"
    elif reason:
        state = f"staged, retrying after: {reason}"
    return f"{upload.get('project_id')}/{upload.get('name')} ({size} bytes) {state}"


def wait_for_uploads(mountpoint: Path, report: Callable[[str], None]) -> None:
    """Ask the mount at `mountpoint` to upload now and wait until no file is staged or uploading.

    Failed uploads and rsync's temporary files are not waited for. They stay
    in the spool, and the report lists them.
    """
    upload_now_flag(mountpoint).touch()
    last = None
    while True:
        uploads = read_upload_status(mountpoint)
        pending = [
            upload
            for upload in uploads
            if upload.get("state") != "failed" and not is_temporary_name(str(upload.get("name", "")))
        ]
        if not pending:
            left = [upload for upload in uploads if upload not in pending]
            if left:
                report(
                    f"{len(left)} file(s) stay in the spool for the next mount: "
                    + "; ".join(describe_upload(upload) for upload in left[:5])
                )
            return
        text = f"waiting for {len(pending)} upload(s): " + "; ".join(describe_upload(upload) for upload in pending[:3])
        if text != last:
            if last is None:
                report("uploading pending files before unmounting (Ctrl-C stops waiting and keeps them in the spool; "
                       "`rayfs unmount --no-wait` unmounts at once)")
            report(text)
            last = text
        time.sleep(0.5)


def unmount(mountpoint: Path, *, wait: bool = True, report: Callable[[str], None] = print) -> None:
    """Unmount `mountpoint` and wait for its rayfs process to exit; raise MountError on failure.

    With `wait` the pending uploads finish first; without it they stay in the
    spool, and the next mount of the same account uploads them.
    """
    if not is_mounted(mountpoint):
        remove_state(mountpoint)
        if not os.path.lexists(mountpoint):
            raise MountError(f"{mountpoint} does not exist")
        raise MountError(f"{mountpoint} is not mounted")

    state = next((s for s in read_states() if s.get("mountpoint") == str(mountpoint)), None)
    running = bool(state) and isinstance(state.get("pid"), int) and process_alive(state["pid"])
    if running and wait:
        wait_for_uploads(mountpoint, report)
    elif running:
        no_wait_flag(mountpoint).touch()
        left = read_upload_status(mountpoint)
        if left:
            report(f"{len(left)} file(s) stay in the spool for the next mount: "
                   + "; ".join(describe_upload(upload) for upload in left[:5]))

    command = ["fusermount3", "-u", str(mountpoint)] if shutil.which("fusermount3") else ["umount", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        no_wait_flag(mountpoint).unlink(missing_ok=True)
        reason = result.stderr.strip()
        if "busy" in reason.lower():
            raise MountError(
                f"{mountpoint} is busy: close the programs and shells using it (`fuser -vm {mountpoint}` lists them), "
                "then run `rayfs unmount` again"
            )
        raise MountError(f"unmounting {mountpoint} failed: {reason or 'exit code ' + str(result.returncode)}")

    if running:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while process_alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
    remove_state(mountpoint)


def require_settings(settings: Settings) -> None:
    """Raise ConfigError early for settings that cannot work."""
    settings.resolved_api_url()
    settings.resolved_token()
    settings.cache_max_bytes()
    for name, folder in (("cache_dir", settings.resolved_cache_dir()), ("spool_dir", settings.resolved_spool_dir())):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"invalid {name} {folder}: it is a file, not a folder")
    if settings.auth_scheme not in ("Bearer", "", "token"):
        raise ConfigError(f"invalid auth_scheme {settings.auth_scheme!r}: use Bearer, token or an empty value")
