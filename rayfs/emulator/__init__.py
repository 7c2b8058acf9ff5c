"""A RAYTeams-compatible server for the demo, the tests and the benchmarks.

It serves every endpoint of the Project API under `/v1.0`, OAuth 2.0
authorize and token endpoints, expiring download links with HTTP Range,
multipart uploads, and the API's error quirks. Records live in SQLite and
attachment bytes in files under the data directory. Faults (latency, errors,
HTTP 429, dropped connections, short link lifetimes) are switched at run time
through `/_emulator/faults`.

It imports nothing from the rest of rayfs, so it can stand in for the real
service in any test.
"""

from .credentials import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TOKEN
from .runner import EmulatorHandle, run_in_thread, serve

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_TOKEN",
    "EmulatorHandle",
    "run_in_thread",
    "serve",
]
