"""The sandbox against hostile programs: each test also shows that its check is able to fail."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openrlhf_das.data.sandbox import SandboxLimits, SandboxResult, isolation_available, run_python

ROOT = Path(__file__).resolve().parents[1]
QUICK = SandboxLimits(wall_time_s=10.0)  # benign snippets take ~0.1 s here; the limit only bounds a hang
# prctl(PR_SET_NAME): the program renames itself (and its forks) so the test can find it in /proc.
RENAME = "import ctypes\nctypes.CDLL(None).prctl(15, {token!r}.encode(), 0, 0, 0)\n"


def _token() -> str:
    return "dsbx" + secrets.token_hex(5)  # 14 chars: fits the 15-char process name


def _processes_named(name: str) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                count += Path(entry.path, "comm").read_text().strip() == name
    return count


def _run_watching(source: str, limits: SandboxLimits, name: str) -> tuple[SandboxResult, int, int]:
    """Run ``source`` while counting host processes named ``name``: (result, most seen, left after)."""
    most = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, _processes_named(name))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_python(source, limits)
    finally:
        done.set()
        watcher.join()
    return result, most, _processes_named(name)


def test_isolation_is_available_here() -> None:
    """The hostile tests below rely on it; a broken launcher must fail here, not skip."""
    assert isolation_available()


def test_clean_run_and_failures() -> None:
    ok = run_python("import os\nprint('hello', os.getcwd())\n", QUICK)
    assert (ok.status, ok.returncode, ok.stdout, ok.isolated) == ("passed", 0, "hello /tmp/work\n", True)
    assert 0 < ok.duration_s < QUICK.wall_time_s
    bad = run_python("assert 1 + 1 == 3\n", QUICK)
    assert (bad.status, bad.returncode) == ("failed", 1) and bad.stderr.rstrip().endswith("AssertionError")
    assert run_python("import sys\nsys.exit(3)\n", QUICK).returncode == 3


def test_infinite_sleep_times_out_and_every_process_is_dead() -> None:
    name = _token()
    source = RENAME.format(token=name) + (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # leave the process group: killing the group would miss it\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    result, most, left = _run_watching(source, SandboxLimits(wall_time_s=1.0), name)
    assert result.status == "timeout" and result.returncode is None
    assert 1.0 <= result.duration_s < 5.0
    assert most == 2  # both processes were seen running, so "left" below is meaningful
    assert left == 0


def test_busy_loop_hits_the_cpu_limit() -> None:
    result = run_python("while True:\n    pass\n", SandboxLimits(wall_time_s=10.0, cpu_time_s=1))
    assert result.status == "timeout" and result.returncode == -24  # SIGXCPU, not the 10 s wall


def test_memory_bombs_are_stopped() -> None:
    limits = SandboxLimits(wall_time_s=10.0, memory_bytes=256 << 20)
    one_shot = run_python("block = bytearray(8 << 30)\n", limits)
    assert one_shot.status == "memory"
    growing = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(10 << 20))\n", limits)
    assert growing.status == "memory"


def test_fork_bomb_is_contained() -> None:
    name = _token()
    source = RENAME.format(token=name) + (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    limits = SandboxLimits(wall_time_s=2.0, max_processes=12)
    result, most, left = _run_watching(source, limits, name)
    assert result.status == "timeout"
    assert 2 <= most <= limits.max_processes
    assert left == 0


@contextlib.contextmanager
def _tcp_server() -> Iterator[tuple[int, Callable[[], int]]]:
    """A server on 127.0.0.1 counting accepted connections; yields (port, accepted count)."""
    accepted = 0
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        nonlocal accepted
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                accepted += 1
                conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1], lambda: accepted
    finally:
        done.set()
        thread.join()
        server.close()


def test_no_network_even_to_the_hosts_loopback() -> None:
    with _tcp_server() as (port, accepted):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the server works from the test process...
        deadline = time.monotonic() + 2
        while accepted() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accepted() == 1
        source = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('CONNECTED')\n"
            "except OSError as exc:\n"
            "    print('BLOCKED', exc)\n"
        )
        result = run_python(source, SandboxLimits(wall_time_s=5.0))
        time.sleep(0.2)
        assert result.status == "passed" and result.stdout.startswith("BLOCKED"), result
        assert accepted() == 1  # ...but nothing arrived from the sandbox


def test_writes_outside_the_workdir_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = _token()
    targets = ["inside.txt", f"../{marker}-up.txt", f"/tmp/{marker}-tmp.txt", str(tmp_path / "abs.txt"),
               str(ROOT / f"{marker}-repo.txt")]
    source = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.strerror)\n"
    )
    result = run_python(source, QUICK)
    assert result.status == "passed"
    lines = result.stdout.splitlines()
    # Scratch writes succeed inside the sandbox's private tmpfs...
    assert lines[:3] == [f"wrote {p}" for p in targets[:3]]
    # ...the caller's /tmp is hidden behind it, and the rest of the host filesystem is read-only...
    assert lines[3] == f"refused {targets[3]} No such file or directory"
    # (a checkout under /tmp, /var/tmp or /dev/shm is hidden by the private tmpfs instead)
    hidden = any(ROOT.resolve().is_relative_to(d) for d in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")))
    reason = "No such file or directory" if hidden else "Read-only file system"
    assert lines[4] == f"refused {targets[4]} {reason}"
    # ...and nothing exists afterwards, in the caller's cwd or anywhere else.
    assert list(tmp_path.iterdir()) == []
    for leftover in (tmp_path.parent / f"{marker}-up.txt", Path(f"/tmp/{marker}-tmp.txt"),
                     ROOT / f"{marker}-repo.txt", Path("inside.txt")):
        assert not leftover.exists()


def test_parent_environment_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _token()
    monkeypatch.setenv("FAKE_SECRET", secret)
    # A process holding the secret in its environment block, readable through the host's /proc.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 10  # environ reads empty until the holder's exec is done
        while secret not in Path(f"/proc/{holder.pid}/environ").read_text(errors="replace"):
            assert time.monotonic() < deadline, "the secret never showed in the holder's environ"
            time.sleep(0.01)
        source = (
            "import os\n"
            "print(os.environ.get('FAKE_SECRET'))\n"
            "found = 0\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            f"        found += {secret!r}.encode() in open(f'/proc/{{pid}}/environ', 'rb').read()\n"
            "    except OSError:\n"
            "        pass\n"
            "print(found, sorted(os.environ))\n"
        )
        result = run_python(source, QUICK)
    finally:
        holder.kill()
        holder.wait()
    assert result.status == "passed", result
    assert result.stdout.splitlines()[0] == "None"
    assert result.stdout.splitlines()[1].startswith("0 ")
    assert "FAKE_SECRET" not in result.stdout


def test_output_and_file_size_are_bounded() -> None:
    limits = SandboxLimits(wall_time_s=5.0, file_size_bytes=1 << 20, output_bytes=1000)
    chatty = run_python("print('y' * 100_000)\nprint('end')\n", limits)
    assert chatty.status == "passed" and len(chatty.stdout) == 1000 and chatty.stdout.endswith("end\n")
    big = run_python("open('big', 'wb').write(b'0' * (2 << 20))\n", limits)
    assert big.status == "failed" and "File too large" in big.stderr


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(wall_time_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(max_processes=0)


# Seccomp filter making unshare(2) fail with EPERM, as on hosts without namespace support.
_NO_NAMESPACES = """
import ctypes, struct
nr = {nr}
code = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
raw = b"".join(struct.pack("HBBI", *insn) for insn in code)
buf = ctypes.create_string_buffer(raw)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
prog = Prog(len(code), ctypes.cast(buf, ctypes.c_void_p))
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
from openrlhf_das.data.sandbox import SandboxUnavailableError, isolation_available, run_python
assert not isolation_available()
try:
    run_python("print('ran')")
    print("NOT REFUSED")
except SandboxUnavailableError as exc:
    print("REFUSED", "allow_network_fallback" in str(exc))
result = run_python("print('ran')", allow_network_fallback=True)
print(result.status, result.isolated, result.stdout.strip())
"""


def test_refuses_without_isolation_unless_fallback_allowed() -> None:
    unshare_nr = {"x86_64": 272, "aarch64": 97}.get(platform.machine())
    if unshare_nr is None:
        pytest.skip(f"no unshare syscall number for {platform.machine()}")
    out = subprocess.run([sys.executable, "-c", _NO_NAMESPACES.format(nr=unshare_nr)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["REFUSED True", "passed False ran"]
