"""Supervisor process of one sandbox run; executed as a script by :mod:`openrlhf_das.data.sandbox`.

Run as ``python -I -S sandbox_launcher.py CONFIG_JSON`` (standard library only, no site, so it
starts fast and imports nothing from the caller's environment). Process tree::

    launcher  (caller's uid; new user/net/mount/pid/ipc/uts namespaces when ``isolate``)
      └─ init     (pid 1 of the new pid namespace; mounts a fresh /proc, reaps, reports)
           └─ program  (rlimits, no_new_privs, throwaway uid when root; exec'd interpreter)

The launcher enforces the wall-clock limit: on expiry it SIGKILLs ``init``; the kernel then kills
every process of the pid namespace before ``init`` can be reaped, so when the launcher exits,
nothing of the run is left. ``init`` dies with the launcher (``PR_SET_PDEATHSIG``), so the caller
killing the launcher has the same effect.

Outcome lines (JSON, one per line) go to the status fd named in the config, never to the
program: ``{"setup_error": str}``, ``{"exit_code": int}``, ``{"signal": int}``, ``{"timeout": true}``.
"""

import ctypes
import json
import os
import re
import resource
import select
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
# statvfs f_flag bits share their values with the MS_* flags above.
KEPT_MOUNT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME
WRITABLE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")
WORKDIR = "/tmp/work"
SETUP_FAILED_EXIT = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _cstr(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ret = _libc.mount(_cstr(source), _cstr(target), _cstr(fstype), ctypes.c_ulong(flags), _cstr(data))
    _check(ret, f"mount {target}")


def _report(fd: int, **outcome: object) -> None:
    os.write(fd, (json.dumps(outcome) + "\n").encode())


def _enter_namespaces() -> None:
    """New namespaces; without root, a user namespace mapping our own uid/gid onto themselves."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")
    if uid != 0:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)


def _mount_points() -> set[str]:
    """Mount points of our mount namespace (mountinfo field 5, octal escapes such as \\040 decoded)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f}


def _blocked_ancestor(path: str) -> str | None:
    """Outermost directory on ``path`` that "others" may not traverse (e.g. a 0700 home), if any."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _build_filesystem(cfg: dict) -> None:
    """Read-only host filesystem, private tmpfs scratch space, interpreter reachable by any uid."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for point in _mount_points():
        if point.startswith("/proc"):
            continue  # replaced by a fresh procfs for the new pid namespace in init
        try:
            kept = os.statvfs(point).f_flag & KEPT_MOUNT_FLAGS
        except OSError:
            continue  # shadowed by a later mount on a parent path; unreachable anyway
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    tmpfs_opts = f"size={cfg['tmpfs_bytes']},mode=1777"
    for point in WRITABLE_TMPFS:
        if os.path.isdir(point):
            _mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts)
    prefix = cfg["interpreter_prefix"]
    blocked = _blocked_ancestor(prefix)
    if blocked is not None:
        stage = "/tmp/.sandbox-prefix"
        os.mkdir(stage, 0o700)
        _mount(prefix, stage, None, MS_BIND | MS_REC)
        _mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        os.makedirs(prefix, 0o755)
        _mount(stage, prefix, None, MS_BIND | MS_REC)
        _check(_libc.umount2(stage.encode(), MNT_DETACH), f"umount {stage}")
        os.rmdir(stage)


def _exec_program(cfg: dict, workdir: str, status_fd: int) -> None:
    """In the forked program process: limits, identity, then exec. Never returns."""
    try:
        limits = cfg["limits"]
        cpu = limits["cpu_time_s"]
        for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                           (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
                           (resource.RLIMIT_FSIZE, (limits["file_size_bytes"],) * 2),
                           (resource.RLIMIT_NPROC, (limits["max_processes"],) * 2),
                           (resource.RLIMIT_NOFILE, (256, 256)),
                           (resource.RLIMIT_CORE, (0, 0))):
            resource.setrlimit(res, value)
        run_uid = cfg["run_uid"]
        if run_uid is not None:
            os.setgroups([])
            os.setresgid(run_uid, run_uid, run_uid)
            os.setresuid(run_uid, run_uid, run_uid)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.chdir(workdir)
        interpreter = cfg["interpreter"]
        os.execve(interpreter, [interpreter, "-I", "-B", "main.py"], dict(cfg["env"], HOME=workdir))
    except BaseException as exc:  # noqa: BLE001 - any failure here is a setup failure
        _report(status_fd, setup_error=f"program setup: {exc!r}")
    os._exit(SETUP_FAILED_EXIT)


def _run_init(cfg: dict, workdir: str, status_fd: int) -> int:
    """Body of init: start the program, reap everything, report the program's outcome."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    os.setpgid(0, 0)
    if cfg["isolate"]:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    program = os.fork()
    if program == 0:
        _exec_program(cfg, workdir, status_fd)
    while True:
        pid, wait_status = os.wait()
        if pid == program:
            break
    if os.WIFSIGNALED(wait_status):
        _report(status_fd, signal=os.WTERMSIG(wait_status))
    else:
        _report(status_fd, exit_code=os.WEXITSTATUS(wait_status))
    return 0


def main() -> int:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # closed on exec: the program never sees it
    try:
        with open(cfg["program_path"], encoding="utf-8") as f:
            source = f.read()
        if cfg["isolate"]:
            _enter_namespaces()
            _build_filesystem(cfg)
            workdir = WORKDIR
            os.mkdir(workdir, 0o700)
        else:
            workdir = cfg["fallback_workdir"]
        program_path = os.path.join(workdir, "main.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(source)
        if cfg["run_uid"] is not None:
            for path in (workdir, program_path):
                os.chown(path, cfg["run_uid"], cfg["run_uid"])
        init = os.fork()
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, not raised
        _report(status_fd, setup_error=f"launcher: {exc!r}")
        return SETUP_FAILED_EXIT
    if init == 0:
        try:
            code = _run_init(cfg, workdir, status_fd)
        except BaseException as exc:  # noqa: BLE001
            _report(status_fd, setup_error=f"init: {exc!r}")
            code = SETUP_FAILED_EXIT
        os._exit(code)
    pidfd = os.pidfd_open(init)
    ready, _, _ = select.select([pidfd], [], [], cfg["limits"]["wall_time_s"])
    if not ready:
        _report(status_fd, timeout=True)
        os.kill(init, signal.SIGKILL)
    try:
        os.killpg(init, signal.SIGKILL)  # leftovers in init's group (what is left without a pid namespace)
    except ProcessLookupError:
        pass
    os.waitpid(init, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
