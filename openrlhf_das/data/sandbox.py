"""Run untrusted Python source (e.g. model-generated code) in an isolated child process.

Never ``exec`` generated code in the trainer. :func:`run_python` starts a separate process tree
(see ``sandbox_launcher.py``) with:

* **no network**: a new, empty network namespace (only a down loopback device), so neither the
  internet nor services on the host's 127.0.0.1 are reachable;
* a new pid namespace (the program sees only its own processes; when the run ends or times out,
  the kernel kills every process it started, including ones that called ``setsid``), a new
  mount, IPC and UTS namespace, and a freshly mounted ``/proc``;
* a **read-only host filesystem**; the only writable places are private tmpfs mounts on
  ``/tmp`` (the working directory is the fresh ``/tmp/work``), ``/var/tmp`` and ``/dev/shm``,
  which vanish with the run, so nothing the program writes, by relative or absolute path, stays
  (the caller's own ``/tmp`` is hidden behind them). A directory on the interpreter's path that
  other users may not enter (e.g. a 0700 ``/root`` holding pyenv) is replaced by an empty one
  that holds only the interpreter;
* a **scrubbed environment** (nothing is inherited from the caller's ``os.environ``);
* rlimits: CPU seconds, address space (memory), size of any written file, number of processes
  and threads, 256 open files, no core dumps; plus a wall-clock limit;
* ``no_new_privs``, and, when the caller is root, a throwaway uid for the program (so the process
  limit counts only this run's processes and root-only files stay unreadable);
* the base interpreter of the caller (``-I``: no venv, no user site, no ``PYTHON*`` variables).

Isolation needs Linux namespaces: root (``CAP_SYS_ADMIN``), or unprivileged user namespaces.
Whether they work is probed once per process (:func:`isolation_available`). Without them
:func:`run_python` raises :class:`SandboxUnavailableError` unless the caller passes
``allow_network_fallback=True``; the fallback keeps only the rlimits, scrubbed environment,
temporary working directory and process-group kill, and gives **no network or filesystem
isolation** (and, as root, no process limit), so use it only for trusted code.

Still shared with the host in every mode: world-readable files, CPU time and memory up to the
limits above. stdout/stderr are written to files bounded by the file-size limit, so a flood of
output costs no memory in the caller.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "isolation_available",
    "run_python",
]

SandboxStatus = Literal["passed", "failed", "timeout", "memory", "error"]

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
# Extra seconds the caller waits for the launcher beyond the wall limit before killing it itself.
_SUPERVISOR_GRACE_S = 5.0
# Throwaway uids for root callers: far above any real account, below the (uid_t)-1 sentinel.
_RUN_UID_RANGE = (1_000_000_000, 2_000_000_000)
_PROGRAM_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class SandboxUnavailableError(RuntimeError):
    """Namespace isolation does not work here and the caller did not allow the unsafe fallback."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. Every limit applies to each process of the run.

    Attributes:
        wall_time_s: wall-clock seconds from start to kill (whole process tree).
        cpu_time_s: CPU seconds per process (RLIMIT_CPU); ``None`` means ``ceil(wall_time_s)``.
        memory_bytes: address space per process (RLIMIT_AS), in bytes.
        file_size_bytes: largest file any process may write (RLIMIT_FSIZE), in bytes; also caps
            captured stdout/stderr.
        tmpfs_bytes: size of each private tmpfs (``/tmp``, ``/var/tmp``, ``/dev/shm``), in bytes.
        max_processes: processes plus threads of the run (RLIMIT_NPROC).
        output_bytes: how many bytes of stdout and of stderr are returned (the last ones).
    """

    wall_time_s: float = 10.0
    cpu_time_s: int | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    tmpfs_bytes: int = 64 << 20
    max_processes: int = 32
    output_bytes: int = 8 << 10

    def __post_init__(self) -> None:
        if self.wall_time_s <= 0 or (self.cpu_time_s is not None and self.cpu_time_s <= 0):
            raise ValueError("wall_time_s and cpu_time_s must be positive")
        if min(self.memory_bytes, self.file_size_bytes, self.tmpfs_bytes, self.max_processes,
               self.output_bytes) <= 0:
            raise ValueError(f"all limits must be positive, got {self}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    Attributes:
        status: ``passed`` (exit code 0), ``failed`` (non-zero exit or killed by a signal other
            than the CPU limit), ``timeout`` (wall or CPU limit), ``memory`` (``MemoryError``
            under the address-space limit), ``error`` (the sandbox itself could not start).
        returncode: exit code of the program, or ``-signal`` when a signal killed it; ``None``
            on timeout or error.
        stdout: last ``output_bytes`` of the program's stdout, decoded as UTF-8 (replacing).
        stderr: same for stderr; on ``error`` it holds the setup failure.
        duration_s: wall-clock seconds of the whole run, sandbox start-up included.
        isolated: whether namespace isolation (no network, read-only filesystem) was in force.
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolated: bool

    @property
    def passed(self) -> bool:
        """True when the program exited with code 0."""
        return self.status == "passed"


@functools.cache
def _isolation_failure() -> str | None:
    """Why isolation does not work here (``None`` when it does); probed once per process."""
    result = _run("pass\n", SandboxLimits(), isolate=True)
    if result.status == "passed":
        return None
    return f"{result.status}: {result.stderr.strip() or 'no detail'}"


def isolation_available() -> bool:
    """Whether :func:`run_python` can isolate programs here (namespaces usable). Cached."""
    return _isolation_failure() is None


def run_python(
    source: str,
    limits: SandboxLimits = SandboxLimits(),
    *,
    allow_network_fallback: bool = False,
) -> SandboxResult:
    """Run ``source`` as the ``__main__`` module of a fresh interpreter inside the sandbox.

    Thread-safe; each call builds and tears down its own process tree and temporary directory.

    Args:
        source: Python program text. Its working directory is a fresh empty directory that also
            holds the program as ``main.py``.
        limits: resource limits (see :class:`SandboxLimits`).
        allow_network_fallback: run without namespace isolation (network reachable, host
            filesystem writable wherever the caller's uid may write) when isolation is
            unavailable here. Only for trusted code; the result's ``isolated`` is then False.

    Raises:
        SandboxUnavailableError: isolation is unavailable and the fallback was not allowed.
    """
    failure = _isolation_failure()
    if failure is not None and not allow_network_fallback:
        raise SandboxUnavailableError(
            "cannot isolate untrusted code here (Linux namespaces unavailable: needs root or "
            f"unprivileged user namespaces): {failure}. Pass allow_network_fallback=True to run "
            "it without network/filesystem isolation anyway."
        )
    return _run(source, limits, isolate=failure is None)


def _run(source: str, limits: SandboxLimits, *, isolate: bool) -> SandboxResult:
    interpreter = os.path.realpath(sys.executable)
    cpu_time_s = limits.cpu_time_s if limits.cpu_time_s is not None else math.ceil(limits.wall_time_s)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="das-sandbox-") as private:  # 0700, caller-owned
        program_path = os.path.join(private, "main.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(source)
        fallback_workdir = os.path.join(private, "work")
        os.mkdir(fallback_workdir)
        config = {
            "isolate": isolate,
            "program_path": program_path,
            "fallback_workdir": fallback_workdir,
            "interpreter": interpreter,
            "interpreter_prefix": os.path.realpath(sys.base_prefix),
            "run_uid": secrets.randbelow(_RUN_UID_RANGE[1] - _RUN_UID_RANGE[0]) + _RUN_UID_RANGE[0]
            if isolate and os.getuid() == 0 else None,
            "env": dict(_PROGRAM_ENV, TMPDIR="/tmp" if isolate else fallback_workdir),
            "tmpfs_bytes": limits.tmpfs_bytes,
            "limits": dict(asdict(limits), cpu_time_s=cpu_time_s),
        }
        status_r, status_w = os.pipe()
        config["status_fd"] = status_w
        stdout_path, stderr_path = os.path.join(private, "stdout"), os.path.join(private, "stderr")
        try:
            with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", _LAUNCHER, json.dumps(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(_PROGRAM_ENV),
                    pass_fds=(status_w,), start_new_session=True, close_fds=True,
                )
            os.close(status_w)
            status_w = -1
            supervisor_killed = not _wait_exit(proc.pid, limits.wall_time_s + _SUPERVISOR_GRACE_S)
            if supervisor_killed:
                with contextlib.suppress(ProcessLookupError):  # init follows via PDEATHSIG
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            outcome = _read_outcome(status_r)
        finally:
            os.close(status_r)
            if status_w != -1:
                os.close(status_w)
        stdout = _tail(stdout_path, limits.output_bytes)
        stderr = _tail(stderr_path, limits.output_bytes)
    duration_s = time.monotonic() - start
    if supervisor_killed:
        outcome.setdefault("timeout", True)
    return _classify(outcome, proc.returncode, stdout, stderr, duration_s, isolate)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Whether child ``pid`` exits within ``timeout_s`` seconds (pidfd: no polling delay)."""
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _read_outcome(fd: int) -> dict:
    """Merge the launcher's JSON status lines (all writers have exited, so this cannot block)."""
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    outcome: dict = {}
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        outcome.update(json.loads(line))
    return outcome


def _tail(path: str, limit: int) -> str:
    """Last ``limit`` bytes of a file, decoded as UTF-8 with replacement."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
        return f.read(limit).decode("utf-8", "replace")


def _classify(outcome: dict, launcher_rc: int | None, stdout: str, stderr: str, duration_s: float,
              isolated: bool) -> SandboxResult:
    def result(status: SandboxStatus, returncode: int | None, err: str = stderr) -> SandboxResult:
        return SandboxResult(status, returncode, stdout, err, duration_s, isolated)

    if "setup_error" in outcome:
        return result("error", None, f"sandbox setup failed: {outcome['setup_error']}\n{stderr}")
    if outcome.get("timeout"):
        return result("timeout", None)
    if "signal" in outcome:
        sig = outcome["signal"]
        return result("timeout" if sig == signal.SIGXCPU else "failed", -sig)
    if "exit_code" not in outcome:
        return result("error", None, f"sandbox launcher exited with {launcher_rc} and no outcome\n{stderr}")
    code = outcome["exit_code"]
    if code == 0:
        return result("passed", 0)
    last_line = stderr.strip().rsplit("\n", 1)[-1]
    return result("memory" if last_line.startswith("MemoryError") else "failed", code)
