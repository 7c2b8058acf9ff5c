"""The rayfs command: one-line errors for common mistakes, and recovery from a dead mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rayfs.emulator import DEMO_CLIENT_ID, DEMO_TOKEN


def rayfs(*args: str, home=None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, RAYFS_CONFIG=os.devnull)
    if home is not None:
        environment["XDG_CACHE_HOME"] = str(home / "xdg-cache")
    return subprocess.run([sys.executable, "-m", "rayfs", *args], capture_output=True, text=True, env=environment)


def mount_args(mountpoint, api_url: str, *extra: str) -> list[str]:
    return ["mount", str(mountpoint), "--api-url", api_url, "--token", DEMO_TOKEN, "--client-id", DEMO_CLIENT_ID, *extra]


def test_invalid_port_names_url(tmp_path):
    (tmp_path / "mnt").mkdir()
    result = rayfs(*mount_args(tmp_path / "mnt", "http://127.0.0.1:99999/v1.0"), home=tmp_path)
    assert result.returncode == 1
    assert "http://127.0.0.1:99999/v1.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_api_is_one_line(tmp_path):
    (tmp_path / "mnt").mkdir()
    result = rayfs(*mount_args(tmp_path / "mnt", "http://127.0.0.1:9/v1.0"), home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("rayfs: cannot reach the RAYTeams API at http://127.0.0.1:9/v1.0")
    assert len(result.stderr.strip().splitlines()) == 1


def test_rejected_token_is_one_line(emulator, tmp_path):
    (tmp_path / "mnt").mkdir()
    args = ["mount", str(tmp_path / "mnt"), "--api-url", emulator.api_url, "--token", "wrong", "--client-id", DEMO_CLIENT_ID]
    result = rayfs(*args, home=tmp_path)
    assert result.returncode == 1
    assert "rejected the credentials" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_mountpoint_mistakes_are_explained(emulator, tmp_path):
    missing = rayfs(*mount_args(tmp_path / "nope", emulator.api_url), home=tmp_path)
    assert "does not exist" in missing.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    not_empty = rayfs(*mount_args(busy, emulator.api_url), home=tmp_path)
    assert "is not empty" in not_empty.stderr

    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_folder = rayfs(*mount_args(a_file, emulator.api_url), home=tmp_path)
    assert "is not a folder" in not_folder.stderr


def test_unusable_cache_dir_is_one_line(emulator, tmp_path):
    (tmp_path / "mnt").mkdir()
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    result = rayfs(*mount_args(tmp_path / "mnt", emulator.api_url, "--cache-dir", str(blocker)), home=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(blocker) in result.stderr


def test_dead_mount_can_be_unmounted(emulator, mount_factory):
    mount = mount_factory(emulator)
    pid = mount.pid
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] != "Z":
        time.sleep(0.05)

    again = mount.rayfs(*mount_args(mount.path, emulator.api_url))
    assert again.returncode == 1
    assert "rayfs unmount" in again.stderr
    status = mount.rayfs("status", str(mount.path))
    assert "the mount process has ended" in status.stdout
    unmounted = mount.rayfs("unmount", str(mount.path))
    assert unmounted.returncode == 0, unmounted.stderr
    assert not mount.mounted()


def test_by_id_links_have_no_xattrs(seed_mount):
    link = seed_mount.path / ".by-id" / "334c972a-5756-45f7-8eb1-f3f84bedd525"
    assert os.listxattr(link, follow_symlinks=False) == []
    result = subprocess.run(["rsync", "-aX", f"{seed_mount.path}/.by-id/", f"{seed_mount.path.parent}/copy/"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["unmount"], ["status"]])
def test_unknown_mountpoint_reports(tmp_path, command):
    result = rayfs(*command, str(tmp_path / "never-mounted"), home=tmp_path)
    assert result.returncode == 1


def test_status_into_closed_pipe_is_quiet(tmp_path):
    environment = dict(os.environ, RAYFS_CONFIG=os.devnull, XDG_CACHE_HOME=str(tmp_path))
    result = subprocess.run(
        f"{sys.executable} -m rayfs status | true; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, env=environment,
    )
    assert result.stdout.strip() == "0"
    assert result.stderr == ""


def test_cache_dir_file_with_log_file_is_explained(emulator, tmp_path):
    (tmp_path / "mnt").mkdir()
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    args = mount_args(tmp_path / "mnt", emulator.api_url, "--cache-dir", str(blocker), "--log-file", str(tmp_path / "m.log"))
    result = rayfs(*args, home=tmp_path)
    assert result.returncode == 1
    assert f"invalid cache_dir {blocker}: it is a file, not a folder" in result.stderr
