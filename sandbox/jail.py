"""Process isolation for untrusted training code: a bubblewrap jail, rlimits, cgroups, tree kill.

Two isolation levels:

* ``IsolationLevel.NAMESPACES`` ("bwrap"): the command runs under ``bwrap --unshare-all``
  (no network, own PID/IPC/UTS/user/cgroup namespaces), with a read-only view of just the
  system directories a Python + torch process needs, the interpreter prefixes, and the
  spec's read-only paths. The work directory is the only writable host path; ``/tmp`` and
  ``$HOME`` live on a fresh tmpfs. All capabilities are dropped and the process runs as uid
  65534 inside. Launched by root, that uid maps back to host root: the read-only binds and
  the dropped capabilities (plus ``no_new_privs``, which bwrap sets) are what protect the
  host, so only what is needed is bound, read-only.
* ``IsolationLevel.PROCESS`` ("process"): rlimits, a scrubbed environment, a new session
  and a whole-tree kill only. **No filesystem or network isolation**: used on macOS or where
  user namespaces are unavailable, and reported as such.

In both modes a cgroup (v1 controllers or v2) is used where the caller may create one: it
caps resident memory and the number of tasks, measures CPU time and peak memory, and makes
the tree kill complete (double-forked daemons included). Without one a watchdog thread
counts the tree's processes and resident memory and kills the tree past the limits.

The caller (the experiment runner) owns the clock: ``JailedProcess`` exposes ``poll``,
``terminate``, ``kill``, ``wait`` and live ``cpu_seconds``; ``run_jailed`` is a convenience
that terminates at a wall-clock (or CPU-time) budget and kills a grace period later.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO

GIB = 1024**3
MIB = 1024**2

#: uid/gid the jailed process runs as inside the user namespace (``nobody``/``nogroup``).
JAIL_UID = 65534
JAIL_GID = 65534

#: Seconds between a SIGTERM and the SIGKILL that follows in ``run_jailed``.
DEFAULT_KILL_GRACE_S = 3.0

_WATCHDOG_INTERVAL_S = 0.2
#: Set (process mode without a cgroup only) so that the tree kill can find daemons that
#: escaped the process tree by double-forking: every process whose environment has it dies.
JAIL_ID_ENV = "AUTORESEARCH_JAIL_ID"
_PUMP_CHUNK = 1 << 20
#: Set in every jail's environment (both levels): the host path of its work directory. A
#: server that was killed cannot kill its jails; the next one finds what they left behind by
#: this marker (``kill_orphans``), scoped to its own runs directory.
JAIL_DIR_ENV = "AUTORESEARCH_JAIL_DIR"
_PR_SET_PDEATHSIG = 1
#: Seconds an empty jail cgroup must have existed before ``remove_empty_jail_cgroups`` removes it.
_CGROUP_MIN_AGE_S = 120.0

#: Host directories bound read-only (or recreated as symlinks) in every bwrap jail.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
#: Host files from /etc bound read-only: dynamic loader config and time zone only.
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
)
_NSSWITCH = b"passwd: files\ngroup: files\nhosts: files\n"
_PASSWD = (
    f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
    f"nobody:x:{JAIL_UID}:{JAIL_GID}:nobody:/tmp/home:/usr/sbin/nologin\n"
).encode()
_GROUP = f"root:x:0:\nnogroup:x:{JAIL_GID}:\n".encode()
_HOSTS = b"127.0.0.1 localhost\n::1 localhost\n"
#: CPU weights of a jail's cgroup (cgroup v2 cpu.weight scale; v1 cpu.shares is scaled).
NORMAL_CPU_WEIGHT, LOWEST_CPU_WEIGHT = 100, 1
#: Niceness of a background jail where no cpu cgroup can be made (cannot be undone unprivileged).
BACKGROUND_NICE = 10
#: Device nodes and driver files needed for CUDA, bound only when ``JailSpec.gpu``.
_GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
_GPU_EXTRA_RO = (
    "/usr/lib/wsl",  # WSL2 driver libraries
    "/etc/OpenCL",
    "/etc/vulkan",
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/module/nvidia",
    "/run/nvidia-persistenced",
)


class IsolationLevel(str, Enum):  # noqa: UP042 - str mixin, as specified
    """How strongly a jailed process is isolated from the host."""

    NAMESPACES = "bwrap"
    """Full jail: bubblewrap namespaces, read-only binds, no network, plus rlimits."""
    PROCESS = "process"
    """Rlimits, scrubbed environment and tree kill only; no filesystem/network isolation."""


class IsolationUnavailable(RuntimeError):
    """Raised when full isolation is required but bubblewrap cannot create a jail here."""


def _bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def detect_isolation() -> IsolationLevel:
    """Return the strongest isolation level that actually works on this machine (cached).

    Runs a trivial command (``true``) under bwrap with the same namespace flags the jail
    uses; any failure (no bwrap, user namespaces disabled, seccomp-restricted container)
    yields ``IsolationLevel.PROCESS``.
    """
    bwrap = _bwrap_path()
    if bwrap is None or not sys.platform.startswith("linux"):
        return IsolationLevel.PROCESS
    true_bin = shutil.which("true") or "/bin/true"
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    argv += _system_bind_args()
    argv += ["--proc", "/proc", "--dev", "/dev", "--uid", str(JAIL_UID), "--gid", str(JAIL_GID)]
    argv.append(true_bin)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return IsolationLevel.PROCESS
    return IsolationLevel.NAMESPACES if done.returncode == 0 else IsolationLevel.PROCESS


def _isolation_help() -> str:
    return (
        "bubblewrap could not create a sandbox on this machine. Install it "
        "(Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`; "
        "Arch: `pacman -S bubblewrap`) and make sure unprivileged user namespaces are enabled "
        "(`sysctl kernel.unprivileged_userns_clone=1` on Debian, "
        "`sysctl kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile for "
        "bwrap on Ubuntu 24.04+, `user.max_user_namespaces` > 0). In Docker, run with "
        "`--security-opt seccomp=unconfined` or use process isolation "
        "(require_isolation=False), which has NO filesystem or network isolation."
    )


def require_namespaces() -> None:
    """Raise ``IsolationUnavailable`` (with install instructions) unless bwrap works here."""
    if detect_isolation() is not IsolationLevel.NAMESPACES:
        raise IsolationUnavailable(_isolation_help())


#: Sentinel for ``JailLimits.address_space_bytes``: 16 GiB on CPU, unlimited with ``cuda``.
DEFAULT_ADDRESS_SPACE = -1


@dataclass(frozen=True)
class JailLimits:
    """Resource limits for one jailed process tree. ``None`` means unlimited.

    ``address_space_bytes`` is RLIMIT_AS (virtual memory). Its default depends on ``cuda``:
    16 GiB on CPU, unlimited with ``cuda=True`` (CUDA reserves a huge virtual address
    space); resident memory is then bounded by ``memory_bytes``, enforced by a memory cgroup
    where one can be created, else by the watchdog. ``processes`` is enforced by a pids
    cgroup (which counts *threads* too) or by the watchdog (which counts processes).
    ``output_bytes`` caps the log file; later output is discarded and the result says the
    output was truncated.
    """

    cuda: bool = False
    address_space_bytes: int | None = DEFAULT_ADDRESS_SPACE
    memory_bytes: int | None = 8 * GIB
    file_size_bytes: int | None = 1 * GIB
    open_files: int = 1024
    processes: int = 256
    output_bytes: int = 16 * MIB

    def __post_init__(self) -> None:
        if self.address_space_bytes == DEFAULT_ADDRESS_SPACE:
            object.__setattr__(self, "address_space_bytes", None if self.cuda else 16 * GIB)


@dataclass(frozen=True)
class JailSpec:
    """Where and how a command runs in the jail.

    ``workdir`` is the only writable host path and the working directory inside (bound at
    the same path). ``readonly_paths`` are bound read-only at the same paths. ``env`` is
    the ONLY environment inside, plus PATH, HOME, LANG and TMPDIR set by the jail (HOME and
    TMPDIR on a fresh tmpfs in bwrap mode, under ``workdir`` in process mode). ``gpu``
    binds the NVIDIA device nodes and driver files. ``isolation`` None means
    ``detect_isolation()``; ``require_isolation`` makes a missing bwrap an error instead of
    a silent fall back to process isolation. ``stdin_pipe`` gives the command a stdin the
    caller writes with ``JailedProcess.send``. ``background`` starts it at the lowest CPU
    weight (cgroup cpu controller; niceness 10 where there is none), so that a process
    started early, beside a training run, only takes CPU the run leaves idle;
    ``JailedProcess.to_foreground`` restores the normal weight. ``pass_fds`` are the only
    descriptors besides stdin/stdout/stderr the command inherits (at the same numbers, in
    both isolation levels), e.g. the write end of a report pipe; the caller keeps ownership
    and closes its copies once the jail has started. Every other descriptor of the server
    is closed in the jail.
    """

    workdir: Path
    readonly_paths: tuple[Path, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    limits: JailLimits = field(default_factory=JailLimits)
    gpu: bool = False
    #: Paths inside bound folders to hide (an empty read-only tmpfs is mounted over each): e.g. the
    #: raw corpus a val split is built from, which sits in the virtual environment. bwrap only.
    hidden_paths: tuple[Path, ...] = ()
    isolation: IsolationLevel | None = None
    require_isolation: bool = False
    stdin_pipe: bool = False
    background: bool = False
    pass_fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class JailResult:
    """Outcome of ``run_jailed``.

    ``returncode`` is negative for death by a signal (bwrap's ``128 + signal`` exit status
    is mapped to ``-signal``). ``timed_out`` means the budget ran out and the jail was
    stopped. ``limit_hit`` names a limit that made the jail kill the tree ("memory" or
    "processes"), or None.
    """

    returncode: int
    timed_out: bool
    cpu_seconds: float
    wall_seconds: float
    peak_memory_bytes: int | None
    output_truncated: bool
    isolation: IsolationLevel
    limit_hit: str | None = None


# --------------------------------------------------------------------------------------
# /proc helpers


def _read_stat(pid: int) -> tuple[int, int, float, int] | None:
    """Return (ppid, starttime ticks, cpu seconds incl. reaped children, rss bytes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rparen = data.rfind(b")")
    fields = data[rparen + 2 :].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11.
    try:
        ppid = int(fields[1])
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        start = int(fields[19])
        rss_pages = int(fields[21])
    except (IndexError, ValueError):
        return None
    return ppid, start, ticks / _CLK_TCK, rss_pages * _PAGE_SIZE


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _all_pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _descendants(root: int, extra: set[int] | None = None) -> dict[int, tuple[int, float, int]]:
    """Live processes in the tree under ``root`` (inclusive) plus ``extra`` pids.

    Returns pid -> (starttime, cpu seconds incl. reaped children, rss bytes).
    """
    stats: dict[int, tuple[int, int, float, int]] = {}
    for pid in _all_pids():
        st = _read_stat(pid)
        if st is not None:
            stats[pid] = st
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    out: dict[int, tuple[int, float, int]] = {}
    todo = [root, *(extra or ())]
    while todo:
        pid = todo.pop()
        if pid in out or pid not in stats:
            continue
        _, start, cpu, rss = stats[pid]
        out[pid] = (start, cpu, rss)
        todo.extend(children.get(pid, ()))
    return out


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _pids_with_env(name: str, value: str) -> list[int]:
    """Processes whose initial environment contains ``name=value`` (best effort)."""
    needle = f"{name}={value}".encode()
    out: list[int] = []
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            continue
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# cgroups


def _own_cgroup_paths() -> dict[str, str]:
    """Map controller name (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                _, controllers, path = parts
                for c in controllers.split(",") if controllers else [""]:
                    out[c] = path
    except OSError:
        pass
    return out


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[k] = int(v)
    except OSError:
        pass
    return out


class _Cgroup:
    """One jail's cgroup(s): v1 (pids, memory, cpuacct hierarchies) or a v2 directory."""

    def __init__(self, dirs: dict[str, Path], v2: bool) -> None:
        self.dirs = dirs  # controller -> directory ("unified" for v2)
        self.v2 = v2
        self._procs_fds: list[int] = []

    @property
    def has_pids(self) -> bool:
        return "pids" in self.dirs

    @property
    def has_memory(self) -> bool:
        return "memory" in self.dirs

    @classmethod
    def create(cls, limits: JailLimits) -> _Cgroup | None:
        """Create a cgroup for one jail with the limits applied, or None if not permitted."""
        if not sys.platform.startswith("linux"):
            return None
        name = f"autoresearch-jail-{uuid.uuid4().hex[:12]}"
        own = _own_cgroup_paths()
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():
            return cls._create_v2(root, own.get("", "/"), name, limits)
        dirs: dict[str, Path] = {}
        for ctrl in ("pids", "memory", "cpuacct", "cpu"):
            mount = root / ctrl
            if not (mount / "cgroup.procs").exists():
                continue
            d = mount / own.get(ctrl, "/").lstrip("/") / name
            shared = [c for c in dirs.values() if c.resolve() == d.resolve()]
            if shared:  # co-mounted controllers (cpu,cpuacct): one directory serves both
                dirs[ctrl] = shared[0]
                continue
            try:
                d.mkdir()
            except OSError:
                continue
            dirs[ctrl] = d
        if not dirs:
            unified = root / "unified"
            if (unified / "cgroup.procs").exists():
                return cls._create_v2(unified, own.get("", "/"), name, limits)
            return None
        cg = cls(dirs, v2=False)
        if "pids" in dirs and not _write(dirs["pids"] / "pids.max", str(limits.processes)):
            cg._drop("pids")
        if "memory" in dirs:
            if limits.memory_bytes is None:
                pass
            elif _write(dirs["memory"] / "memory.limit_in_bytes", str(limits.memory_bytes)):
                memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    _write(memsw, str(limits.memory_bytes))
                _write(dirs["memory"] / "memory.swappiness", "0")
            else:
                cg._drop("memory")
        return cg

    @classmethod
    def _create_v2(cls, mount: Path, own: str, name: str, limits: JailLimits) -> _Cgroup | None:
        parent = mount / own.lstrip("/")
        d = parent / name
        try:
            d.mkdir()
        except OSError:
            return None
        # Enabling controllers fails (EBUSY) if the parent holds processes and is not the
        # root; the cgroup is still useful for membership, cgroup.kill and cpu.stat.
        available = set()
        with contextlib.suppress(OSError):
            available = set((parent / "cgroup.controllers").read_text().split())
        for ctrl in ("pids", "memory", "cpu"):
            if ctrl in available:
                _write(parent / "cgroup.subtree_control", f"+{ctrl}")
        cg = cls({"unified": d}, v2=True)
        enabled = set()
        with contextlib.suppress(OSError):
            enabled = set((d / "cgroup.controllers").read_text().split())
        if "pids" in enabled and _write(d / "pids.max", str(limits.processes)):
            cg.dirs["pids"] = d
        if "memory" in enabled and (
            limits.memory_bytes is None or _write(d / "memory.max", str(limits.memory_bytes))
        ):
            _write(d / "memory.swap.max", "0")
            cg.dirs["memory"] = d
        if "cpu" in enabled:
            cg.dirs["cpu"] = d
        return cg

    def cpu_weight(self) -> int | None:
        d = self.dirs.get("cpu")
        if d is None:
            return None
        if self.v2:
            return _read_int(d / "cpu.weight")
        shares = _read_int(d / "cpu.shares")
        return None if shares is None else max(1, shares * 100 // 1024)

    def set_cpu_weight(self, weight: int) -> bool:
        """Relative CPU weight against sibling cgroups (100 = normal, 1 = lowest); False if unsupported."""
        d = self.dirs.get("cpu")
        if d is None:
            return False
        if self.v2:
            return _write(d / "cpu.weight", str(max(1, min(10_000, weight))))
        return _write(d / "cpu.shares", str(max(2, weight * 1024 // 100)))

    def _drop(self, ctrl: str) -> None:
        d = self.dirs.pop(ctrl, None)
        if d is not None and d not in self.dirs.values():
            with contextlib.suppress(OSError):
                d.rmdir()

    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def open_for_join(self) -> None:
        """Open the cgroup.procs files now, so the forked child only has to write."""
        self._procs_fds = [
            os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self._unique_dirs()
        ]

    def join_self(self) -> None:
        """Move the calling process into the cgroup (runs in the child before exec)."""
        for fd in self._procs_fds:
            os.write(fd, b"0")

    def close_join_fds(self) -> None:
        """Close the descriptors opened by ``open_for_join`` (in the parent)."""
        for fd in self._procs_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs_fds = []

    def pids(self) -> set[int]:
        """Processes currently in the cgroup."""
        out: set[int] = set()
        for d in self._unique_dirs():
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return out

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill on v2 where available)."""
        for d in self._unique_dirs():
            if self.v2 and (d / "cgroup.kill").exists():
                _write(d / "cgroup.kill", "1")
        for pid in self.pids():
            _signal_pid(pid, signal.SIGKILL)

    def cpu_seconds(self) -> float | None:
        """CPU time of all tasks that ever ran in the cgroup, or None if not measured."""
        if "cpuacct" in self.dirs:
            ns = _read_int(self.dirs["cpuacct"] / "cpuacct.usage")
            return None if ns is None else ns / 1e9
        if self.v2:
            usec = _read_kv(self.dirs["unified"] / "cpu.stat").get("usage_usec")
            return None if usec is None else usec / 1e6
        return None

    def peak_memory(self) -> int | None:
        """Peak resident memory charged to the cgroup (memory controller only)."""
        d = self.dirs.get("memory")
        if d is None:
            return None
        if self.v2:
            return _read_int(d / "memory.peak")
        return _read_int(d / "memory.max_usage_in_bytes")

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a task in the cgroup for exceeding the limit."""
        d = self.dirs.get("memory")
        if d is None:
            return False
        if self.v2:
            return _read_kv(d / "memory.events").get("oom_kill", 0) > 0
        return _read_kv(d / "memory.oom_control").get("oom_kill", 0) > 0

    def pids_limit_hit(self) -> bool:
        """Whether a fork/clone in the cgroup failed because of the pids limit."""
        d = self.dirs.get("pids")
        if d is None:
            return False
        return _read_kv(d / "pids.events").get("max", 0) > 0

    def remove(self) -> None:
        """Kill what is left and remove the cgroup directories (retrying briefly)."""
        deadline = time.monotonic() + 5.0
        for d in self._unique_dirs():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        break
                    if time.monotonic() > deadline:
                        break
                    self.kill_all()
                    time.sleep(0.05)
        self.dirs = {}


# --------------------------------------------------------------------------------------
# bwrap command line


def _gpu_library_dirs() -> list[str]:
    """The operator's LD_LIBRARY_PATH entries (where a CUDA driver may live), for GPU jails.

    Some machines ship libcuda outside the loader's cache (/usr/local/nvidia/lib64, a
    module system's tree): a GPU jail keeps the server's LD_LIBRARY_PATH and binds those
    folders read-only. It is the operator's setting, never the agent's.
    """
    return [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d and os.path.isdir(d)]


def _system_bind_args() -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def _python_prefixes() -> list[Path]:
    """The server interpreter's venv and base prefixes, real paths (symlinks resolved)."""
    out: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        for q in (Path(p), Path(p).resolve()):
            if q not in out and q.exists():
                out.append(q)
    return out


def _ro_bind_paths(spec: JailSpec, argv0: str) -> list[Path]:
    """Read-only binds besides the system dirs: interpreter prefixes, argv[0], spec paths."""
    paths = _python_prefixes()
    exe = Path(argv0)
    if exe.is_absolute() and exe.exists():
        real = exe.resolve()
        if not any(real.is_relative_to(p) for p in (Path("/usr"), *paths)):
            paths.append(real)
    for p in spec.readonly_paths:
        for q in (Path(p).absolute(), Path(p).resolve()):
            if q not in paths:
                paths.append(q)
    # Drop paths already covered by another bind (keeps the mount list short).
    paths.sort(key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in paths:
        if not any(p.is_relative_to(q) and p != q for q in out) and p not in out:
            out.append(p)
    return out


def _aliases_in_jail(hidden: Path, bound: Sequence[Path]) -> list[Path]:
    """Every path under which a hidden folder is visible in the jail: its real path, and the
    same folder under each bound path that is (or passes through) a symlink to its parent.

    A bind follows the link, so a venv reached through a symlink is mounted twice, once per
    name: hiding only the real path would leave the package readable under the other one.
    """
    real = hidden.resolve()
    aliases = [real]
    for path in bound:
        target = path.resolve()
        if target != path and real.is_relative_to(target):
            alias = path / real.relative_to(target)
            if alias not in aliases:
                aliases.append(alias)
    return aliases


def _build_bwrap_argv(
    bwrap: str, argv: Sequence[str], spec: JailSpec, data_fds: dict[str, int]
) -> list[str]:
    workdir = spec.workdir.resolve()
    a = [
        bwrap,
        "--unshare-all",
        "--unshare-user",  # --unshare-all only *tries*; the uid mapping and --disable-userns need it
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(JAIL_UID),
        "--gid",
        str(JAIL_GID),
        "--hostname",
        "jail",
        "--disable-userns",
    ]
    a += _system_bind_args()
    for f in _ETC_FILES:
        if os.path.exists(f):
            a += ["--ro-bind", f, f]
    for dest, fd in data_fds.items():
        a += ["--ro-bind-data", str(fd), dest]
    a += ["--proc", "/proc", "--dev", "/dev"]
    if spec.limits.memory_bytes is not None:
        a += ["--size", str(spec.limits.memory_bytes)]
    a += ["--tmpfs", "/tmp", "--dir", "/tmp/home", "--chmod", "1777", "/tmp"]
    if spec.gpu:
        for pattern in _GPU_DEVICE_GLOBS:
            for dev in sorted(glob.glob(pattern)):
                a += ["--dev-bind", dev, dev]
        for extra in (*_GPU_EXTRA_RO, *_gpu_library_dirs()):
            if os.path.exists(extra) and not any(
                Path(extra).is_relative_to(d) for d in _SYSTEM_DIRS
            ):
                a += ["--ro-bind", extra, extra]
    bound = [p for p in _ro_bind_paths(spec, argv[0]) if p.exists()]
    for p in bound:  # a workdir under a read-only path is bound over it below
        a += ["--ro-bind", str(p), str(p)]
    a += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    for hidden in spec.hidden_paths:
        if hidden.exists():
            for alias in _aliases_in_jail(hidden, bound):
                a += ["--tmpfs", str(alias), "--remount-ro", str(alias)]
    a += ["--remount-ro", "/"]  # bwrap's own root tmpfs (mount points like /root) too
    a += ["--", *argv]
    return a


def _jail_env(spec: JailSpec, level: IsolationLevel) -> dict[str, str]:
    path_dirs = [str(Path(sys.prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
    env = dict(spec.env)
    if level is IsolationLevel.NAMESPACES:
        home, tmp = "/tmp/home", "/tmp"
    else:
        base = spec.workdir.resolve() / ".jail"
        home, tmp = str(base / "home"), str(base / "tmp")
        Path(home).mkdir(parents=True, exist_ok=True)
        Path(tmp).mkdir(parents=True, exist_ok=True)
    env.setdefault("PATH", ":".join(path_dirs))
    library_dirs = _gpu_library_dirs() if spec.gpu else []
    if library_dirs:
        env.setdefault("LD_LIBRARY_PATH", ":".join(library_dirs))
    env["HOME"] = home
    env["TMPDIR"] = tmp
    env.setdefault("LANG", "C.UTF-8")
    return env


# --------------------------------------------------------------------------------------
# the jailed process


class JailedProcess:
    """A command running in the jail. Create with ``JailedProcess.start``.

    The caller owns the budget: ``poll`` / ``wait`` for the exit, ``cpu_seconds`` for a
    CPU-time budget, ``terminate`` (SIGTERM to every process of the tree) then ``kill``
    (SIGKILL to the tree, daemons included). Output (stdout and stderr interleaved) goes
    to one log file capped at ``limits.output_bytes``.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        spec: JailSpec,
        isolation: IsolationLevel,
        cgroup: _Cgroup | None,
        log_file: IO[bytes],
        started: float,
    ) -> None:
        self._popen = popen
        self._spec = spec
        self.isolation = isolation
        self._cgroup = cgroup
        self._log = log_file
        self.started_at = started
        self.output_truncated = False
        self.limit_hit: str | None = None
        self._lock = threading.Lock()
        self._returncode: int | None = None
        self._rusage_cpu: float | None = None
        self._rusage_maxrss: int | None = None
        self._cpu_seen = 0.0
        self._rss_peak = 0
        self._cg_peak: int | None = None
        root = _read_stat(popen.pid)  # not reaped yet, so this is our process
        # pid -> starttime of every process seen in the tree, for the tree kill.
        self._seen: dict[int, int] = {popen.pid: root[1] if root else -1}
        self._done = threading.Event()
        self._finalized = False
        self._final_lock = threading.Lock()
        self._jail_id: str | None = None
        self._pump = threading.Thread(target=self._pump_output, name="jail-pump", daemon=True)
        self._pump.start()
        self._watchdog = threading.Thread(target=self._watch, name="jail-watch", daemon=True)
        self._watchdog.start()

    # ---- construction --------------------------------------------------------------

    @classmethod
    def start(cls, argv: Sequence[str], spec: JailSpec, log_path: Path) -> JailedProcess:
        """Start ``argv`` in the jail described by ``spec``, logging to ``log_path``.

        Raises ``IsolationUnavailable`` if ``spec.require_isolation`` and bwrap does not
        work, or ``spec.isolation`` asks for namespaces that are unavailable.
        """
        if not argv:
            raise ValueError("empty argv")
        level = spec.isolation or detect_isolation()
        if level is IsolationLevel.NAMESPACES or spec.require_isolation:
            require_namespaces()
            level = IsolationLevel.NAMESPACES
        workdir = spec.workdir.resolve()
        if not workdir.is_dir():
            raise FileNotFoundError(f"workdir {workdir} does not exist")
        env = _jail_env(spec, level)
        limits = spec.limits
        cgroup = _Cgroup.create(limits)
        jail_id = uuid.uuid4().hex
        if level is IsolationLevel.PROCESS and cgroup is None:
            env[JAIL_ID_ENV] = jail_id
        env[JAIL_DIR_ENV] = str(workdir)
        data_fds: dict[str, int] = {}
        to_close: list[int] = []
        try:
            if level is IsolationLevel.NAMESPACES:
                bwrap = _bwrap_path()
                assert bwrap is not None
                for dest, content in (
                    ("/etc/passwd", _PASSWD),
                    ("/etc/group", _GROUP),
                    ("/etc/nsswitch.conf", _NSSWITCH),
                    ("/etc/hosts", _HOSTS),
                ):
                    r, w = os.pipe()
                    os.write(w, content)  # small: fits the pipe buffer
                    os.close(w)
                    data_fds[dest] = r
                    to_close.append(r)
                full_argv = _build_bwrap_argv(bwrap, argv, spec, data_fds)
                cwd = "/"
            else:
                full_argv = list(argv)
                cwd = str(workdir)
            if cgroup is not None:
                cgroup.open_for_join()
            weighted = (
                spec.background and cgroup is not None and cgroup.set_cpu_weight(LOWEST_CPU_WEIGHT)
            )
            nice = BACKGROUND_NICE if spec.background and not weighted else 0
            preexec = _make_preexec(limits, cgroup, nice)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the JailedProcess
            started = time.monotonic()
            try:
                popen = subprocess.Popen(
                    full_argv,
                    stdin=subprocess.PIPE if spec.stdin_pipe else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    close_fds=True,  # nothing of the server's leaks in but pass_fds
                    pass_fds=(*data_fds.values(), *spec.pass_fds),
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except BaseException:
                log_file.close()
                raise
        except BaseException:
            if cgroup is not None:
                cgroup.close_join_fds()
                cgroup.remove()
            raise
        finally:
            for fd in to_close:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if cgroup is not None:
            cgroup.close_join_fds()
        proc = cls(popen, spec, level, cgroup, log_file, started)
        proc._jail_id = env.get(JAIL_ID_ENV)
        return proc

    # ---- public API ----------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Host pid of the top process (bwrap in namespace mode, the command otherwise)."""
        return self._popen.pid

    def poll(self) -> int | None:
        """Return the exit status if the top process has exited, else None (non-blocking)."""
        self._reap(block=False)
        if self._returncode is not None:
            self._finalize()
        return self._returncode

    def to_foreground(self) -> None:
        """Give a ``background`` jail the normal CPU weight again (a niceness stays)."""
        if self._cgroup is not None:
            self._cgroup.set_cpu_weight(NORMAL_CPU_WEIGHT)

    def cpu_weight(self) -> int | None:
        """The jail's CPU weight as the kernel has it (cgroup v2 scale), None without a cpu cgroup."""
        return None if self._cgroup is None else self._cgroup.cpu_weight()

    def send(self, text: str) -> bool:
        """Write ``text`` to the command's stdin (``JailSpec.stdin_pipe``) and close it.

        False when the command is gone (it exited, or never read its stdin).
        """
        stdin = self._popen.stdin
        if stdin is None:
            raise ValueError("this jail has no stdin pipe; start it with JailSpec(stdin_pipe=True)")
        try:
            stdin.write(text.encode())
            stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            return False
        return True

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit and return the status; raise ``subprocess.TimeoutExpired``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self._popen.args, timeout or 0.0)
            time.sleep(0.02)

    def terminate(self) -> None:
        """Send SIGTERM to every process of the tree (the bwrap helpers excepted).

        In namespace mode bwrap itself is spared: a SIGTERM would kill it and, through
        ``--die-with-parent``, SIGKILL the jail at once, without a grace period.
        """
        for pid in self._tree_pids():
            if self.isolation is IsolationLevel.NAMESPACES and self._is_bwrap(pid):
                continue
            _signal_pid(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole tree: every descendant, setsid/double-forked daemons included.

        Namespace mode: killing bwrap kills the PID namespace's init and with it every
        process inside. Both modes also kill the process group, every process reachable
        from the top process, every process seen in the tree so far, and the cgroup.
        """
        if self._returncode is None:
            _signal_pid(self._popen.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        for pid in self._tree_pids():
            _signal_pid(pid, signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill_all()
        if self._jail_id is not None:
            for pid in _pids_with_env(JAIL_ID_ENV, self._jail_id):
                _signal_pid(pid, signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the whole tree so far (live; never decreases)."""
        vals = [self._cpu_seen]
        if self._returncode is None:
            vals.append(sum(v[1] for v in _descendants(self._popen.pid).values()))
            if self._returncode is not None:  # raced with the exit: the sample may be partial
                vals.pop()
        if self._cgroup is not None:
            cg = self._cgroup.cpu_seconds()
            if cg is not None:
                vals.append(cg)
        if self._rusage_cpu is not None:
            vals.append(self._rusage_cpu)
        with self._lock:
            self._cpu_seen = max(vals)
            return self._cpu_seen

    def peak_memory_bytes(self) -> int | None:
        """Peak resident memory of the tree: the memory cgroup's peak where there is one,
        else the largest sampled sum of the tree's RSS (shared pages counted per process)
        or the largest single process's max RSS, whichever is larger."""
        if self._cgroup is not None:
            cg = self._cgroup.peak_memory()
            if cg is not None:
                self._cg_peak = max(self._cg_peak or 0, cg)
        if self._cg_peak is not None:
            return self._cg_peak
        peak = max(self._rss_peak, self._rusage_maxrss or 0)
        return peak or None

    @property
    def output_cap(self) -> int:
        """Bytes of output the log keeps (``JailLimits.output_bytes``); past it, ``output_truncated``."""
        return self._spec.limits.output_bytes

    @property
    def returncode(self) -> int | None:
        """The exit status once known (see ``JailResult.returncode``), else None."""
        return self._returncode

    # ---- internals -----------------------------------------------------------------

    def _is_bwrap(self, pid: int) -> bool:
        if pid == self._popen.pid:
            return True
        try:
            return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bwrap"
        except OSError:
            return _comm(pid) == "bwrap"

    def _live_tree(self) -> dict[int, tuple[int, float, int]]:
        """The tree now: descendants of the top process, of every process seen in it
        earlier (if that pid was not reused since) and the cgroup's members."""
        with self._lock:
            seen = dict(self._seen)
        roots: set[int] = set()
        for pid, start in seen.items():
            st = _read_stat(pid)
            if st is not None and st[1] == start:
                roots.add(pid)
        if self._cgroup is not None:
            roots |= self._cgroup.pids()
        if not roots:
            return {}
        first = next(iter(roots))
        return _descendants(first, roots)

    def _tree_pids(self) -> set[int]:
        return set(self._live_tree())

    def _reap(self, block: bool) -> None:
        with self._lock:
            if self._returncode is not None:
                return
            try:
                pid, status, ru = os.wait4(self._popen.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status, ru = self._popen.pid, 0, None
            if pid == 0:
                return
            rc = os.waitstatus_to_exitcode(status)
            if self.isolation is IsolationLevel.NAMESPACES and 128 < rc < 128 + 65:
                rc = -(rc - 128)  # bwrap reports a child killed by signal N as 128 + N
            self._returncode = rc
            self._popen.returncode = rc  # keep Popen from waiting on a reaped pid
            if ru is not None:
                self._rusage_cpu = ru.ru_utime + ru.ru_stime
                self._rusage_maxrss = ru.ru_maxrss * 1024
        self._done.set()

    def _finalize(self) -> None:
        """After exit: kill stragglers, drain the output, record stats, remove the cgroup.

        Idempotent; a second caller waits until the first has finished.
        """
        with self._final_lock:
            if self._finalized:
                return
            self.kill()  # nothing of the tree may outlive the top process
            self._pump.join(timeout=10.0)
            if self._pump.is_alive():  # a survivor still holds the pipe: keep killing
                self.kill()
                self._pump.join(timeout=5.0)
            if threading.current_thread() is not self._watchdog:
                self._done.set()
                self._watchdog.join(timeout=2.0)
            self.cpu_seconds()
            self.peak_memory_bytes()
            if self._cgroup is not None:
                if self.limit_hit is None and self._cgroup.oom_killed():
                    self.limit_hit = "memory"
                self._cgroup.remove()
                self._cgroup = None
            with contextlib.suppress(OSError):
                self._log.close()
            if self._popen.stdin is not None:
                with contextlib.suppress(OSError):
                    self._popen.stdin.close()
            self._finalized = True

    def _pump_output(self) -> None:
        assert self._popen.stdout is not None
        fd = self._popen.stdout.fileno()
        cap = self._spec.limits.output_bytes
        written = 0
        try:
            while True:
                try:
                    chunk = os.read(fd, _PUMP_CHUNK)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                if written < cap:
                    part = chunk[: cap - written]
                    self._log.write(part)
                    self._log.flush()
                    written += len(part)
                    if len(part) < len(chunk):
                        self.output_truncated = True
                else:
                    self.output_truncated = True
        finally:
            with contextlib.suppress(OSError):
                self._popen.stdout.close()
            if self.output_truncated:
                with contextlib.suppress(OSError, ValueError):
                    self._log.write(b"\n[jail: output truncated]\n")
                    self._log.flush()

    def _watch(self) -> None:
        """Sample the tree: remember its pids, CPU and RSS; enforce limits without cgroups."""
        limits = self._spec.limits
        cg = self._cgroup
        while not self._done.wait(_WATCHDOG_INTERVAL_S):
            self._reap(block=False)
            if self._returncode is not None:
                self._finalize()  # remove the cgroup even if the caller never polls
                break
            tree = self._live_tree()
            if self._returncode is not None:
                break
            cpu = sum(v[1] for v in tree.values())
            rss = sum(v[2] for v in tree.values())
            with self._lock:
                for pid, (start, _, _) in tree.items():
                    self._seen.setdefault(pid, start)
                if len(self._seen) > 4 * limits.processes + 64:  # forget the oldest
                    for pid in list(self._seen)[1 : len(self._seen) // 2]:
                        del self._seen[pid]
                self._cpu_seen = max(self._cpu_seen, cpu)
                self._rss_peak = max(self._rss_peak, rss)
            hit: str | None = None
            n_procs = len(tree) - (2 if self.isolation is IsolationLevel.NAMESPACES else 0)
            cg_pids = cg is not None and cg.has_pids
            cg_mem = cg is not None and cg.has_memory
            if cg_pids and cg is not None and cg.pids_limit_hit():
                hit = "processes"  # a fork failed at pids.max: a fork bomb, stop it now
            if not cg_pids and n_procs > limits.processes:
                hit = "processes"
            if cg_mem and cg is not None and cg.oom_killed():
                hit = "memory"
            if not cg_mem and limits.memory_bytes is not None and rss > limits.memory_bytes:
                hit = "memory"
            if hit is not None:
                self.limit_hit = hit
                self.kill()
                break


def _make_preexec(limits: JailLimits, cgroup: _Cgroup | None, nice: int = 0) -> Callable[[], None]:
    """Build the function run in the child between fork and exec: cgroup join, rlimits, nice."""

    def _set(res: int, value: int | None) -> None:
        v = resource.RLIM_INFINITY if value is None else value
        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY and (v == resource.RLIM_INFINITY or v > hard):
                v = hard
            resource.setrlimit(res, (v, v))

    # Linux: the child (bwrap, or the command itself) gets SIGKILL when the thread that
    # started it dies, so a server killed with SIGKILL takes its jails with it (bwrap's
    # --die-with-parent then kills everything inside). The thread is the scheduler's worker,
    # which lives until the run is over: start jails only from a thread that outlives them.
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: do not run orphaned
                os._exit(1)
        if cgroup is not None:
            cgroup.join_self()
        _set(resource.RLIMIT_AS, limits.address_space_bytes)
        _set(resource.RLIMIT_FSIZE, limits.file_size_bytes)
        _set(resource.RLIMIT_NOFILE, limits.open_files)
        _set(resource.RLIMIT_CORE, 0)
        if nice > 0:
            os.nice(nice)

    return preexec


def kill_orphans(root: Path, rounds: int = 5) -> list[int]:
    """SIGKILL every process left by jails whose work directory lies under ``root``.

    For a server restarted after a crash: its predecessor's jails are found by the
    ``AUTORESEARCH_JAIL_DIR`` marker in their environment, or by a current directory under
    ``root`` (a process that cleared its environment). Processes of other servers (other
    ``root``s) are left alone. Returns the pids killed.
    """
    root = Path(root).resolve()
    prefix = os.fsencode(f"{JAIL_DIR_ENV}=")
    me = os.getpid()
    killed: list[int] = []

    def under(path: bytes | str) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (OSError, ValueError):
            return False

    for _ in range(rounds):  # again, for anything forked while we were killing
        found = []
        for pid in _all_pids():
            if pid == me:
                continue
            hit = False
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    hit = any(
                        under(entry[len(prefix) :])
                        for entry in fh.read().split(b"\0")
                        if entry.startswith(prefix)
                    )
            except OSError:
                pass
            if not hit:
                with contextlib.suppress(OSError):
                    hit = under(os.readlink(f"/proc/{pid}/cwd"))
            if hit:
                found.append(pid)
        if not found:
            break
        for pid in found:
            _signal_pid(pid, signal.SIGKILL)
        killed.extend(p for p in found if p not in killed)
        time.sleep(0.1)
    remove_empty_jail_cgroups()
    return killed


def remove_empty_jail_cgroups() -> int:
    """Remove jail cgroups that hold no process (left by a server that was killed); returns how many.

    A cgroup that still has a process cannot be removed (rmdir fails), so live jails, ours or
    another server's, are untouched.
    """
    removed = 0
    # A jail's cgroup is empty between its creation and the child joining it: another server
    # starting up at that moment would remove it and the join would fail. Young ones stay.
    young = time.time() - _CGROUP_MIN_AGE_S
    for pattern in ("/sys/fs/cgroup/**/autoresearch-jail-*",):
        for path in sorted(glob.glob(pattern, recursive=True), key=len, reverse=True):
            with contextlib.suppress(OSError):
                if os.stat(path).st_mtime > young:
                    continue
                if not Path(path, "cgroup.procs").read_text().strip():
                    os.rmdir(path)
                    removed += 1
    return removed


def run_jailed(
    argv: Sequence[str],
    spec: JailSpec,
    log_path: Path,
    timeout_s: float,
    *,
    cpu_timeout_s: float | None = None,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
) -> JailResult:
    """Run ``argv`` in the jail to completion or budget; return what happened.

    At ``timeout_s`` of wall time (or ``cpu_timeout_s`` of tree CPU time, if given) the
    tree gets SIGTERM, and SIGKILL ``kill_grace_s`` later if anything is still running.
    """
    proc = JailedProcess.start(argv, spec, log_path)
    t0 = proc.started_at
    timed_out = False
    term_at: float | None = None
    while True:
        rc = proc.poll()
        if rc is not None:
            break
        now = time.monotonic()
        if term_at is None:
            over_cpu = cpu_timeout_s is not None and proc.cpu_seconds() >= cpu_timeout_s
            if now - t0 >= timeout_s or over_cpu:
                timed_out = True
                term_at = now
                proc.terminate()
        elif now - term_at >= kill_grace_s:
            proc.kill()
            rc = proc.wait(timeout=30)
            break
        time.sleep(0.05)
    rc = proc.wait(timeout=30)
    wall = time.monotonic() - t0
    return JailResult(
        returncode=rc,
        timed_out=timed_out,
        cpu_seconds=proc.cpu_seconds(),
        wall_seconds=wall,
        peak_memory_bytes=proc.peak_memory_bytes(),
        output_truncated=proc.output_truncated,
        isolation=proc.isolation,
        limit_hit=proc.limit_hit,
    )


__all__ = [
    "IsolationLevel",
    "IsolationUnavailable",
    "JailLimits",
    "JailResult",
    "JailSpec",
    "JailedProcess",
    "detect_isolation",
    "kill_orphans",
    "require_namespaces",
    "run_jailed",
]
