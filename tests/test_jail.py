"""Escape attempts against sandbox.jail: real bwrap, real processes, small scripts.

Every attempt is a short Python script run in the jail with a 10-20 s budget; each test
asserts that the attempt failed inside AND that the host is untouched.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from support import wait_until

from sandbox import jail
from sandbox.jail import (
    IsolationLevel,
    IsolationUnavailable,
    JailedProcess,
    JailLimits,
    JailResult,
    JailSpec,
    detect_isolation,
    run_jailed,
)

PY = sys.executable
MIB = 1024**2
REPO_ROOT = Path(__file__).resolve().parent.parent
# How long a killed jail's processes may take to be reaped (a poll, not a sleep: a busy
# machine gets the time it needs, an idle one passes at once).
REAP_DEADLINE_S = 20.0

pytestmark = pytest.mark.e2e


@pytest.fixture
def bubblewrap_required() -> None:
    """These tests need the bubblewrap jail: make test installs it (scripts/install-system-deps.sh)."""
    assert detect_isolation() is IsolationLevel.NAMESPACES, (
        "bubblewrap is unavailable: install it (make test does)"
    )


needs_bwrap = pytest.mark.usefixtures("bubblewrap_required")


def _spec(
    workdir: Path, level: IsolationLevel = IsolationLevel.NAMESPACES, **kw: object
) -> JailSpec:
    return JailSpec(workdir=workdir, isolation=level, **kw)  # type: ignore[arg-type]


def _run(
    tmp_path: Path,
    code: str,
    *,
    level: IsolationLevel = IsolationLevel.NAMESPACES,
    timeout: float = 15,
    grace: float = 3.0,
    **spec_kw: object,
) -> tuple[JailResult, str]:
    workdir = tmp_path / "run"
    workdir.mkdir(exist_ok=True)
    script = workdir / "attempt.py"
    script.write_text(textwrap.dedent(code))
    log = tmp_path / "log.txt"
    res = run_jailed(
        [PY, str(script)], _spec(workdir, level, **spec_kw), log, timeout, kill_grace_s=grace
    )
    return res, log.read_text(errors="replace")


def _procs_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(name))
        except OSError:
            pass
    return found


def _wait_until_gone(marker: str) -> None:
    """Poll until no process carries `marker` in its command line (or fail, naming them)."""
    wait_until(
        lambda: not _procs_with(marker),
        timeout=REAP_DEADLINE_S,
        message=lambda: f"processes still alive: {_procs_with(marker)}",
    )


def _jail_cgroups() -> set[str]:
    out = set()
    for root in Path("/sys/fs/cgroup").glob("**/autoresearch-jail-*"):
        out.add(str(root))
    return out


# ---------------------------------------------------------------------------------------
# network


@needs_bwrap
def test_tcp_to_host_loopback_listener_fails(tmp_path: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        res, log = _run(
            tmp_path,
            f"""
            import socket
            s = socket.socket(); s.settimeout(3)
            try:
                s.connect(("127.0.0.1", {port})); print("ESCAPED")
            except OSError as e:
                print("BLOCKED", type(e).__name__, e)
            """,
        )
        assert "BLOCKED" in log and "ESCAPED" not in log and res.returncode == 0, log
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody ever connected
    finally:
        srv.close()


@needs_bwrap
def test_dns_lookup_fails(tmp_path: Path) -> None:
    # The lookup happens only inside the jail, where there is no network at all.
    res, log = _run(
        tmp_path,
        """
        import socket
        try:
            print("ESCAPED", socket.getaddrinfo("pypi.org", 443))
        except OSError as e:
            print("BLOCKED", e)
        """,
    )
    assert "BLOCKED" in log and "ESCAPED" not in log and res.returncode == 0, log


# ---------------------------------------------------------------------------------------
# filesystem


@needs_bwrap
def test_writes_outside_workdir_fail_and_host_untouched(tmp_path: Path) -> None:
    marker = f"jail-marker-{uuid.uuid4().hex}"
    data = tmp_path / "data"  # bound read-only (train shards)
    data.mkdir()
    (data / "shard.bin").write_bytes(b"train")
    workspace = tmp_path / "workspace"  # not bound at all (the agent's working copy)
    workspace.mkdir()
    targets = [
        f"/root/{marker}",
        f"/tmp/{marker}",
        str(data / marker),
        str(data / "shard.bin"),
        str(workspace / marker),
        f"/usr/{marker}",
        f"{sys.prefix}/{marker}",
        "/etc/passwd",
    ]
    res, log = _run(
        tmp_path,
        f"""
        import os
        for t in {targets!r}:
            try:
                with open(t, "a") as fh:
                    fh.write("x")
                # /tmp is a private tmpfs: a write there must not reach the host
                print("WROTE", t)
            except OSError as e:
                print("BLOCKED", t, e.strerror)
        with open("ok.txt", "w") as fh:
            fh.write("workdir is writable")
        print("DONE")
        """,
        readonly_paths=(data,),
    )
    assert res.returncode == 0, log
    assert "DONE" in log
    for t in targets:
        if t == f"/tmp/{marker}":
            continue  # checked on the host below
        assert f"BLOCKED {t}" in log, log
    assert not Path(f"/root/{marker}").exists()
    assert not Path(f"/tmp/{marker}").exists()
    assert not (data / marker).exists() and (data / "shard.bin").read_bytes() == b"train"
    assert not (workspace / marker).exists()
    assert not Path(f"/usr/{marker}").exists()
    assert not Path(f"{sys.prefix}/{marker}").exists()
    assert (tmp_path / "run" / "ok.txt").read_text() == "workdir is writable"


@needs_bwrap
def test_unbound_files_are_invisible(tmp_path: Path) -> None:
    """Host files the jail was not given do not exist inside it: files this test creates beside
    the workdir (a val split, a private note), the repository's own files, and system secrets."""
    val = tmp_path / "val"
    val.mkdir()
    (val / "val.bin").write_bytes(b"secret val split")
    private = tmp_path / "host-only"
    private.mkdir()
    (private / "NOTES.md").write_text("host-only notes")
    created = [val / "val.bin", val, private / "NOTES.md", private, REPO_ROOT / "pyproject.toml"]
    assert all(
        path.exists() for path in created
    )  # they exist on the host: hiding them means something
    candidates = [
        *(str(path) for path in created),
        "/root/.bash_history",
        "/home",
        "/var/log",
        "/etc/shadow",
        "/etc/resolv.conf",
    ]
    res, log = _run(
        tmp_path,
        f"""
        import os
        for c in {candidates!r}:
            print("VISIBLE" if os.path.exists(c) else "HIDDEN", c)
        print(sorted(os.listdir("/")))
        """,
    )
    assert res.returncode == 0, log
    for c in candidates:
        assert f"HIDDEN {c}" in log, log
    assert "secret val split" not in log and "host-only notes" not in log


@needs_bwrap
def test_server_env_not_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_TOKEN", "secret")
    res, log = _run(
        tmp_path,
        """
        import os
        print("ENV", sorted(os.environ))
        leaked = any("secret" in v for v in os.environ.values())
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    leaked |= b"AUTORESEARCH_TOKEN" in open(f"/proc/{p}/environ", "rb").read()
                except OSError:
                    pass
        print("LEAKED" if leaked else "CLEAN", os.environ.get("AR_SEED"))
        """,
        env={"AR_SEED": "7"},
    )
    assert "CLEAN 7" in log and res.returncode == 0, log
    # AUTORESEARCH_JAIL_DIR marks the jail's processes (a restarted server finds orphans by it): a path, not a secret
    assert (
        "ENV ['AR_SEED', 'AUTORESEARCH_JAIL_DIR', 'HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']" in log
    ), log


# ---------------------------------------------------------------------------------------
# resources


FORK_BOMB = """
import os, time
print("bomb", flush=True)
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""


@needs_bwrap
def test_fork_bomb_contained(tmp_path: Path) -> None:
    cgroups_before = _jail_cgroups()  # other tests (a killed server) may have left empty ones
    t0 = time.monotonic()
    res, log = _run(
        tmp_path, FORK_BOMB, timeout=20, limits=JailLimits(processes=64, memory_bytes=1024 * MIB)
    )
    elapsed = time.monotonic() - t0
    assert "bomb" in log
    assert elapsed < 15, (elapsed, res)
    assert res.limit_hit == "processes" or res.timed_out, res
    assert res.returncode != 0
    assert not _procs_with(str(tmp_path / "run" / "attempt.py"))
    assert not _jail_cgroups() - cgroups_before  # this jail's cgroup is gone


@needs_bwrap
def test_memory_past_address_space_limit(tmp_path: Path) -> None:
    res, log = _run(
        tmp_path,
        """
        try:
            x = bytearray(2 * 1024**3)
            print("ALLOCATED")
        except MemoryError:
            print("MEMORYERROR")
            raise
        """,
        limits=JailLimits(address_space_bytes=1024 * MIB),
    )
    assert "MEMORYERROR" in log and "ALLOCATED" not in log, log
    assert res.returncode == 1


@needs_bwrap
def test_memory_past_resident_limit_killed(tmp_path: Path) -> None:
    res, log = _run(
        tmp_path,
        """
        print("start", flush=True)
        blocks = []
        for i in range(64):
            blocks.append(b"\\x01" * (16 * 1024**2))  # touched pages: resident
        print("ALLOCATED", flush=True)
        """,
        limits=JailLimits(address_space_bytes=None, memory_bytes=256 * MIB),
    )
    assert "ALLOCATED" not in log, log
    assert res.returncode != 0
    assert res.limit_hit == "memory", res
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes >= 128 * MIB


@needs_bwrap
def test_file_size_limit(tmp_path: Path) -> None:
    res, log = _run(
        tmp_path,
        """
        import errno
        try:
            with open("big.bin", "wb") as fh:
                fh.write(b"x" * (3 * 1024**2))
            print("WROTE")
        except OSError as e:
            print("EFBIG" if e.errno == errno.EFBIG else f"OTHER {e}")
        """,
        limits=JailLimits(file_size_bytes=1 * MIB),
    )
    assert "EFBIG" in log and res.returncode == 0, log
    assert (tmp_path / "run" / "big.bin").stat().st_size <= 1 * MIB


@needs_bwrap
def test_huge_stdout_is_capped(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res, log = _run(
        tmp_path,
        """
        import sys
        chunk = b"x" * (1024**2)
        for _ in range(1024):
            sys.stdout.buffer.write(chunk)
        print("END")
        """,
        timeout=60,
        limits=JailLimits(output_bytes=1 * MIB),
    )
    assert time.monotonic() - t0 < 45
    assert res.returncode == 0 and not res.timed_out, res
    assert res.output_truncated and log.endswith("[jail: output truncated]\n")
    assert (tmp_path / "log.txt").stat().st_size <= 1 * MIB + 100


@needs_bwrap
def test_sleep_past_timeout_terminated(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res, _ = _run(tmp_path, "import time; time.sleep(60)", timeout=1.5)
    assert res.timed_out
    assert res.returncode == -signal.SIGTERM, res
    assert time.monotonic() - t0 < 6


@needs_bwrap
def test_ignoring_sigterm_killed_after_grace(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res, log = _run(
        tmp_path,
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """,
        timeout=2,
        grace=1.0,
    )
    assert "ready" in log
    assert res.timed_out
    assert res.returncode == -signal.SIGKILL, res
    assert time.monotonic() - t0 < 8


DAEMON = """
import os, sys, time
marker = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", marker])
    os._exit(0)
time.sleep(0.5)
print("daemon started", flush=True)
"""


def _daemon_run(tmp_path: Path, level: IsolationLevel) -> tuple[JailResult, str, str]:
    marker = f"jail-daemon-{uuid.uuid4().hex}"
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "d.py").write_text(DAEMON)
    res = run_jailed(
        [PY, str(workdir / "d.py"), marker], _spec(workdir, level), tmp_path / "log.txt", 15
    )
    return res, (tmp_path / "log.txt").read_text(), marker


@needs_bwrap
def test_double_forked_daemon_gone_after_run(tmp_path: Path) -> None:
    res, log, marker = _daemon_run(tmp_path, IsolationLevel.NAMESPACES)
    assert "daemon started" in log and res.returncode == 0, (res, log)
    _wait_until_gone(marker)


@needs_bwrap
def test_cpu_seconds_tracks_busy_tree(tmp_path: Path) -> None:
    """cpu_seconds counts the whole tree (a forked child burns the CPU, not the top process),
    live while the jail runs and in total once it has finished."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    stop = workdir / "stop"
    code = (
        "import os, time\n"
        "pid = os.fork()\n"  # the child burns the CPU: the tree is measured, not the top
        "while pid == 0 and time.process_time() < 1.5: pass\n"
        f"while pid == 0 and not os.path.exists({str(stop)!r}): time.sleep(0.02)\n"
        "os.wait() if pid else os._exit(0)\n"
    )
    proc = JailedProcess.start([PY, "-c", code], _spec(workdir), tmp_path / "log.txt")
    try:
        # Live, while running: the child's 1.5 CPU seconds show before it is told to stop.
        live = wait_until(
            lambda: proc.cpu_seconds() >= 1.4 and proc.cpu_seconds(),
            timeout=120,
            interval=0.1,
            message="the busy child's CPU time never showed while the jail ran",
        )
    finally:
        stop.write_text("")
    rc = proc.wait(20)
    total = proc.cpu_seconds()
    wall = time.monotonic() - proc.started_at
    assert rc == 0
    assert 1.4 <= live <= total, (live, total)
    assert total <= wall + 0.5, (total, wall)


@needs_bwrap
def test_torch_works_inside(tmp_path: Path) -> None:
    res, log = _run(
        tmp_path,
        """
        import torch
        print("SUM", float(torch.ones(3).sum()))
        """,
        timeout=60,
    )
    assert res.returncode == 0, log
    assert "SUM 3.0" in log
    assert res.isolation is IsolationLevel.NAMESPACES


@needs_bwrap
def test_no_capabilities_and_unprivileged_uid(tmp_path: Path) -> None:
    res, log = _run(
        tmp_path,
        """
        import os
        status = open("/proc/self/status").read()
        caps = {l.split(":")[0]: l.split()[1] for l in status.splitlines() if l.startswith("Cap")}
        print("UID", os.getuid(), os.getgid(), "CAPEFF", caps["CapEff"], "CAPBND", caps["CapBnd"])
        print("NNP", [l for l in status.splitlines() if l.startswith("NoNewPrivs")])
        """,
    )
    assert res.returncode == 0
    assert "UID 65534 65534 CAPEFF 0000000000000000 CAPBND 0000000000000000" in log, log
    assert "NoNewPrivs:\\t1" in log, log


# ---------------------------------------------------------------------------------------
# process mode (no filesystem/network isolation): env scrub, rlimits, tree kill


def test_process_mode_env_and_rlimits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_TOKEN", "secret")
    res, log = _run(
        tmp_path,
        """
        import os, resource
        print("TOKEN", os.environ.get("AUTORESEARCH_TOKEN"))
        print("AS", resource.getrlimit(resource.RLIMIT_AS)[0])
        print("FSIZE", resource.getrlimit(resource.RLIMIT_FSIZE)[0])
        print("NOFILE", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        print("CORE", resource.getrlimit(resource.RLIMIT_CORE)[0])
        print("SID", os.getsid(0) == os.getpid())
        """,
        level=IsolationLevel.PROCESS,
        limits=JailLimits(address_space_bytes=4096 * MIB, file_size_bytes=MIB, open_files=100),
    )
    assert res.isolation is IsolationLevel.PROCESS
    assert "TOKEN None" in log, log
    assert f"AS {4096 * MIB}" in log and f"FSIZE {MIB}" in log
    assert "NOFILE 100" in log and "CORE 0" in log and "SID True" in log


@pytest.mark.parametrize("with_cgroup", [True, False])
def test_process_mode_tree_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cgroup: bool
) -> None:
    if not with_cgroup:
        monkeypatch.setattr(jail._Cgroup, "create", classmethod(lambda cls, limits: None))
    res, log, marker = _daemon_run(tmp_path, IsolationLevel.PROCESS)
    assert "daemon started" in log and res.returncode == 0, (res, log)
    _wait_until_gone(marker)


def test_process_mode_fork_bomb_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No cgroup: the watchdog counts processes. A slowed bomb keeps the shared host safe.
    monkeypatch.setattr(jail._Cgroup, "create", classmethod(lambda cls, limits: None))
    t0 = time.monotonic()
    res, _ = _run(
        tmp_path,
        """
        import os, time
        while True:
            os.fork(); time.sleep(0.05)
        """,
        level=IsolationLevel.PROCESS,
        timeout=20,
        limits=JailLimits(processes=32),
    )
    assert res.limit_hit == "processes", res
    assert time.monotonic() - t0 < 10
    _wait_until_gone(str(tmp_path / "run" / "attempt.py"))


def test_require_isolation_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail, "detect_isolation", lambda: IsolationLevel.PROCESS)
    spec = JailSpec(workdir=tmp_path, require_isolation=True)
    with pytest.raises(IsolationUnavailable, match="bubblewrap"):
        JailedProcess.start([PY, "-c", "1"], spec, tmp_path / "log")


def test_limits_default_depends_on_cuda() -> None:
    assert JailLimits().address_space_bytes == 16 * 1024**3
    assert JailLimits(cuda=True).address_space_bytes is None
    assert JailLimits(cuda=True, address_space_bytes=5).address_space_bytes == 5


@pytest.mark.parametrize("level", [IsolationLevel.NAMESPACES, IsolationLevel.PROCESS])
def test_jail_inherits_only_the_descriptors_passed(tmp_path: Path, level: IsolationLevel) -> None:
    """A jail holds stdin/stdout/stderr and its pass_fds, nothing else of the server: an open
    pipe of the server (e.g. an evaluator's report channel) is not in a training jail."""
    if level is IsolationLevel.NAMESPACES:
        assert detect_isolation() is IsolationLevel.NAMESPACES, "bubblewrap is unavailable"
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    os.set_inheritable(other_write, True)  # even an inheritable descriptor must not leak in
    try:
        code = f"""
            import os
            fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
            print("FDS", fds, flush=True)
            os.write({write_end}, b"through the channel")
        """
        res, log = _run(tmp_path, code, level=level, pass_fds=(write_end,))
        assert res.returncode == 0, log
        listed = [int(n) for n in log.split("FDS", 1)[1].split("]")[0].strip(" [").split(",")]
        # 0, 1, 2, the passed one, and the descriptor listdir itself held.
        assert write_end in listed and other_write not in listed, listed
        assert len([fd for fd in listed if fd > 2 and fd != write_end]) <= 1, listed
        os.close(write_end)
        assert os.read(read_end, 100) == b"through the channel"
        res, log = _run(tmp_path, code.split("os.write")[0], level=level)  # nothing passed
        listed = [int(n) for n in log.split("FDS", 1)[1].split("]")[0].strip(" [").split(",")]
        assert write_end not in listed and other_write not in listed, listed
    finally:
        for fd in (read_end, other_read, other_write):
            os.close(fd)
