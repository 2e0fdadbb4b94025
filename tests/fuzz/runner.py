"""The child-process runner: one persistent worker process runs many cases, so that a
crash (a signal) or a hang (no answer within the timeout) is caught and attributed to
the case that caused it, without paying TensorFlow's ~3 s import per case.

The parent (`Worker`) talks to the child (`python -m fuzz.runner --fd N`) over a
socket pair with pickled messages: it sends a case (a dict of plain data), the child
answers with an outcome dict (`registry.execute`). When the child dies or does not
answer in time, the parent records a "crash" (with the signal and the tail of the
child's stderr) or a "hang", kills what is left and starts a fresh child for the next
case. The parent never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection

_TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    """A child process that runs cases of the given families; restarted after a crash,
    a hang, or every `restart_every` cases (bounding whatever a long run accumulates)."""

    def __init__(self, families, *, timeout: float = 60.0, start_timeout: float = 180.0,
                 restart_every: int = 2000, env: dict | None = None):
        self.families = list(families)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.restart_every = restart_every
        self.env = env
        self.starts = 0
        self._proc = None
        self._conn = None
        self._log = None
        self._cases = 0

    # -- lifetime
    def _start(self):
        parent, child = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(prefix="tfmps-fuzz-", suffix=".log", delete=False)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join([_TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                            if p])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "fuzz.runner", "--fd", str(child.fileno()), "--families", ",".join(self.families)],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
            cwd=_TESTS_DIR,
        )
        child.close()
        self._conn = Connection(parent.detach())
        self._cases = 0
        self.starts += 1
        if not self._conn.poll(self.start_timeout):
            detail = self._stop()
            raise RuntimeError(f"fuzz worker did not start within {self.start_timeout} s: {detail}")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"fuzz worker died while starting: {self._stop()}") from None
        if message != ("ready",):
            raise RuntimeError(f"fuzz worker failed to start: {message!r}")

    def _stop(self) -> str:
        """Ends the child (killing it if needed); returns how it ended and its stderr tail."""
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        how = ""
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = proc.returncode
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        tail = ""
        if self._log is not None:
            self._log.close()
            with open(self._log.name, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            os.unlink(self._log.name)
            self._log = None
        return f"{how}; stderr tail:\n{tail}"

    def close(self):
        if self._proc is not None:
            try:
                self._conn.send(("exit",))
            except OSError:
                pass
            self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- running cases
    def run(self, case: dict) -> dict:
        """Runs one case in the child; returns its outcome dict (kind, detail)."""
        if self._proc is None or self._cases >= self.restart_every:
            if self._proc is not None:
                self.close()
            self._start()
        self._cases += 1
        try:
            self._conn.send(("case", case))
            answered = self._conn.poll(self.timeout)
            if answered:
                return self._conn.recv()
        except (EOFError, OSError):
            return {"kind": "crash", "detail": self._stop()}
        if self._proc.poll() is not None:  # died just as the wait ended
            return {"kind": "crash", "detail": self._stop()}
        self._proc.kill()
        return {"kind": "hang", "detail": f"no answer within {self.timeout} s; " + self._stop()}


# ------------------------------------------------------------------ the child
def _serve(fd: int, families: list[str]) -> None:
    conn = Connection(fd)
    from fuzz import registry  # imports the families (and with them TensorFlow)

    registry.load(families)
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "exit":
            return
        conn.send(registry.execute(message[1]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--families", required=True)
    args = parser.parse_args()
    _serve(args.fd, [f for f in args.families.split(",") if f])
