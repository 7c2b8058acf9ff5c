"""Fixtures: a real emulator on port 0 and real FUSE mounts of it.

Mount tests need /dev/fuse and fusermount3. Where they are missing the tests
skip with the reason, except under CI (the CI variable set), where they fail:
CI has FUSE, so a missing FUSE there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rayfs.emulator import DEMO_CLIENT_ID, DEMO_TOKEN, run_in_thread

FUSE_MISSING_REASON = None
if not os.path.exists("/dev/fuse"):
    FUSE_MISSING_REASON = "/dev/fuse is missing"
elif not shutil.which("fusermount3"):
    FUSE_MISSING_REASON = "fusermount3 is not installed (apt-get install fuse3)"


def require_fuse() -> None:
    if FUSE_MISSING_REASON is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"FUSE is required in CI: {FUSE_MISSING_REASON}")
    pytest.skip(FUSE_MISSING_REASON)


class Emulator:
    """A running emulator with helpers for its admin routes."""

    def __init__(self, handle):
        self.handle = handle
        self.api_url = handle.api_url
        self.root_url = handle.root_url

    def stats(self) -> dict:
        return requests.get(f"{self.root_url}/_emulator/stats", timeout=10).json()

    def reset_stats(self) -> None:
        requests.post(f"{self.root_url}/_emulator/stats/reset", timeout=10).raise_for_status()

    def set_faults(self, **faults) -> dict:
        response = requests.put(f"{self.root_url}/_emulator/faults", json=faults, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset_faults(self) -> None:
        requests.delete(f"{self.root_url}/_emulator/faults", timeout=10).raise_for_status()

    def add_records(self, records: list[dict]) -> None:
        response = requests.post(f"{self.root_url}/_emulator/records", json={"records": records}, timeout=60)
        response.raise_for_status()

    def api_get(self, path: str):
        response = requests.get(
            self.api_url + path,
            headers={"Authorization": f"Bearer {DEMO_TOKEN}", "x-rayteams-client-id": DEMO_CLIENT_ID},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["data"]

    def download(self, project_id: str, sk: str) -> bytes:
        link = self.api_get(f"/project/{project_id}/attachment/download/{sk}")["downloadLink"]
        return requests.get(link, timeout=60).content


@pytest.fixture
def emulator(tmp_path):
    """A fresh emulator with the seed dataset, for one test."""
    with run_in_thread(data_dir=tmp_path / "emulator", dataset="seed") as handle:
        yield Emulator(handle)


class Mount:
    """A background `rayfs mount` of an emulator, started through the real CLI."""

    def __init__(self, emulator: Emulator, root: Path, *extra_args: str, cache_dir: Path | None = None):
        self.emulator = emulator
        self.path = root / "mnt"
        self.path.mkdir()
        self.cache_dir = cache_dir or root / "cache"
        self.log_file = root / "mount.log"
        self.environment = dict(os.environ)
        self.environment.update(
            {
                "XDG_CACHE_HOME": str(root / "xdg-cache"),
                "XDG_CONFIG_HOME": str(root / "xdg-config"),
                "RAYFS_CONFIG": os.devnull,
            }
        )
        command = [
            sys.executable, "-m", "rayfs", "mount", str(self.path),
            "--api-url", emulator.api_url,
            "--token", DEMO_TOKEN,
            "--client-id", DEMO_CLIENT_ID,
            "--cache-dir", str(self.cache_dir),
            "--log-file", str(self.log_file),
            "--debug",
            *extra_args,
        ]
        self.start_result = subprocess.run(command, env=self.environment, capture_output=True, text=True)

    @property
    def pid(self) -> int | None:
        states = (Path(self.environment["XDG_CACHE_HOME"]) / "rayfs" / "mounts").glob("*.json")
        for state_path in states:
            state = json.loads(state_path.read_text())
            if state["mountpoint"] == str(self.path.resolve()):
                return state["pid"]
        return None

    def mounted(self) -> bool:
        """True while the kernel lists the mount, also after its process died."""
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            return any(line.split(" ")[1] == str(self.path) for line in mounts)

    def rayfs(self, *args: str) -> subprocess.CompletedProcess:
        """Run another rayfs command with this mount's environment."""
        return subprocess.run([sys.executable, "-m", "rayfs", *args], env=self.environment, capture_output=True, text=True)

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def unmount(self) -> subprocess.CompletedProcess:
        pid = self.pid
        result = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True)
        while pid is not None and _alive(pid):
            time.sleep(0.05)
        return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of this test process counts as ended.
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def mount_factory(tmp_path):
    """Start mounts of an emulator; each is unmounted with fusermount3 at teardown, asserting success."""
    require_fuse()
    mounts: list[Mount] = []

    def start(emulator: Emulator, *extra_args: str, name: str = "m", cache_dir: Path | None = None) -> Mount:
        root = tmp_path / f"mount-{name}-{len(mounts)}"
        root.mkdir()
        mount = Mount(emulator, root, *extra_args, cache_dir=cache_dir)
        if mount.start_result.returncode != 0:
            raise AssertionError(f"rayfs mount failed: {mount.start_result.stderr}\n{mount.log()}")
        mounts.append(mount)
        return mount

    yield start

    for mount in mounts:
        if mount.mounted():
            result = mount.unmount()
            assert result.returncode == 0, f"fusermount3 -u failed: {result.stderr}"


@pytest.fixture
def seed_mount(emulator, mount_factory):
    return mount_factory(emulator)
