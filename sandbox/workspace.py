"""Per-agent working copy: which files an agent may read or edit, and safe access to them.

A workspace is a folder holding only the editable files of the research target (by default
`train.py`). Reference files (program.md, prepare.py, evaluate.py) stay where they are on
disk and are only ever read. Every name an agent sends is checked here before anything is
opened or written; a refusal says what was wrong and what to send instead.

Every editable file is capped in size (`MAX_EDITABLE_FILE_BYTES`, 64 KiB by default), and the
cap is enforced where every change lands, `Workspace.replace_files`, so no way of changing a
file (a diff, a string edit, a whole-file write, a checkout) can get past it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sandbox.target import ResearchTarget

MAX_COMPONENT_BYTES = 255
MAX_NAME_BYTES = 1024
_SHOWN_NAME_CHARS = 60

# The size cap on each editable file. The baseline train.py is ~13 KB; 64 KiB leaves room for
# five times as much code (~1,500 lines), while bounding the data an agent could smuggle in:
# the default corpus is 9.6 MB (2.4 MB compressed); the default val split is 142 KB of text,
# 207 KB as a Python list of its token ids, and 60 KB lzma-compressed and base85-encoded,
# which leaves no room for the baseline's 13 KB of code. The cap bounds, it cannot prevent:
# the 24 windows a CPU evaluation scores are ~20 KB of text (~11 KB compressed). Against
# those stand the secret val split and the embedded_data flag (server/diff_review.py).
MAX_EDITABLE_FILE_BYTES = 64 * 1024


class PathRefused(ValueError):
    """A file name an agent sent was refused; the message tells the agent what to send."""


class FileTooLarge(PathRefused):
    """A new content for an editable file is over the size cap; nothing was written."""


@dataclass(frozen=True)
class PathPolicy:
    """Which names an agent may edit (inside its workspace) and read (reference files)."""

    editable: tuple[str, ...]
    reference: dict[str, Path]
    max_file_bytes: int = MAX_EDITABLE_FILE_BYTES

    @classmethod
    def from_target(cls, target: ResearchTarget) -> PathPolicy:
        """The policy a research target describes: its editable and reference files."""
        return cls(editable=tuple(target.editable), reference=dict(target.reference))

    def all_names(self) -> tuple[str, ...]:
        """Every name an agent may read: editable files first, then reference files."""
        return self.editable + tuple(n for n in self.reference if n not in self.editable)

    def check_file_size(self, name: str, size: int) -> None:
        """Refuse (FileTooLarge) a new content of size bytes for the editable file name.

        Workspace.replace_files calls it for every file; code that runs files without a
        workspace (a merge of two experiments, say) can call it too.
        """
        limit = self.max_file_bytes
        if size > limit:
            raise FileTooLarge(
                f"{name!r} would be {size} bytes; an editable file may hold at most {limit} "
                f"bytes ({limit / 1024:g} KiB). Nothing was changed. Keep {name!r} to code "
                "(no embedded data or text) and make the change smaller, e.g. remove code "
                "that is no longer used."
            )


def hash_files(files: Mapping[str, bytes]) -> str:
    """A stable sha256 (hex) over sorted (name, bytes) pairs, length-prefixed."""
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file as list_files() shows it to an agent."""

    name: str
    access: Literal["editable", "readable"]
    size_bytes: int
    lines: int


def _shown(name: str) -> str:
    """The name as quoted back to an agent, cut short when it is very long."""
    if len(name) > _SHOWN_NAME_CHARS:
        return repr(name[:_SHOWN_NAME_CHARS] + "...")
    return repr(name)


def _count_lines(data: bytes) -> int:
    """Lines in a text file, counting a last line without a newline."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _fsync_directory(folder: Path) -> None:
    """Make renames inside folder durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Workspace:
    """An agent's folder of editable files, with every access checked against a PathPolicy."""

    def __init__(self, root: Path, policy: PathPolicy) -> None:
        self.root = Path(root).absolute()
        self.policy = policy

    @classmethod
    def create(cls, root: Path, policy: PathPolicy, files: Mapping[str, bytes]) -> Workspace:
        """Open the workspace at root, first creating it with files if it does not exist yet.

        Idempotent: an existing workspace is opened as it is (the agent's edits are kept).
        A new workspace appears all at once (built in a sibling folder, then renamed).
        """
        workspace = cls(root, policy)
        for name in files:
            workspace._editable_name(name)
        if workspace.root.is_dir():
            return workspace
        workspace.root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{workspace.root.name}.", dir=workspace.root.parent)
        )
        try:
            for name, content in files.items():
                _write_new_file(staging / workspace._editable_name(name), content, 0o644)
            staging.chmod(0o755)
            try:
                staging.rename(workspace.root)
            except OSError:
                if not workspace.root.is_dir():  # not a lost race with another create()
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        _fsync_directory(workspace.root.parent)
        return workspace

    # -- name checks --------------------------------------------------------------------

    def _plain_name(self, name: object) -> str:
        """Check the shape of a name (no policy yet) and return it without a leading './'."""
        hint = self._hint()
        if not isinstance(name, str):
            raise PathRefused(f"File names must be strings, not {type(name).__name__}. {hint}")
        if not name.strip():
            raise PathRefused(f"An empty file name is refused. {hint}")
        if "\x00" in name:
            raise PathRefused(f"{_shown(name)} is refused: it contains a NUL byte. {hint}")
        encoded = name.encode("utf-8", errors="surrogatepass")
        if len(encoded) > MAX_NAME_BYTES:
            raise PathRefused(
                f"{_shown(name)} is refused: the name is too long ({len(encoded)} bytes, "
                f"at most {MAX_NAME_BYTES}). {hint}"
            )
        if any(len(part) > MAX_COMPONENT_BYTES for part in encoded.split(b"/")):
            raise PathRefused(
                f"{_shown(name)} is refused: a path component is too long "
                f"(at most {MAX_COMPONENT_BYTES} bytes). {hint}"
            )
        if name.startswith("/"):
            raise PathRefused(f"{_shown(name)} is refused: absolute paths are not allowed. {hint}")
        if "\\" in name:
            raise PathRefused(
                f"{_shown(name)} is refused: backslashes are not allowed in names. {hint}"
            )
        if ".." in name.split("/"):
            raise PathRefused(f"{_shown(name)} is refused: paths may not contain '..'. {hint}")
        plain = name[2:] if name.startswith("./") else name
        if "/" in plain or plain in ("", "."):
            raise PathRefused(
                f"{_shown(name)} is refused: only plain file names are allowed, no folders. {hint}"
            )
        return plain

    def _hint(self) -> str:
        """The 'what to send instead' part of a refusal."""
        example = self.policy.editable[0] if self.policy.editable else "train.py"
        return f"Use a name from list_files(), e.g. {example!r}."

    def _names_listing(self) -> str:
        editable = ", ".join(self.policy.editable) or "none"
        readable = ", ".join(n for n in self.policy.reference if n not in self.policy.editable)
        return f"Editable: {editable}. Read-only: {readable or 'none'}."

    def _editable_name(self, name: object) -> str:
        """A checked editable name, or PathRefused saying which names are editable."""
        plain = self._plain_name(name)
        if plain in self.policy.editable:
            return plain
        if plain in self.policy.reference:
            raise PathRefused(
                f"{_shown(plain)} is read-only: it is a reference file and cannot be changed. "
                f"Only these files can be edited: {', '.join(self.policy.editable)}."
            )
        raise PathRefused(
            f"{_shown(plain)} is not a file of this workspace. {self._names_listing()}"
        )

    def _check_on_disk(self, name: str, path: Path) -> bool:
        """Refuse a workspace file that is a symlink, not regular, or hard-linked.

        Returns whether the file exists.
        """
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise PathRefused(
                f"{name!r} is refused: in the workspace it is a symbolic link, and links are "
                "never followed. Ask the operator to reset the workspace."
            )
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(
                f"{name!r} is refused: in the workspace it is not a regular file. "
                "Ask the operator to reset the workspace."
            )
        if info.st_nlink > 1:
            raise PathRefused(
                f"{name!r} is refused: in the workspace it has {info.st_nlink} hard links. "
                "Ask the operator to reset the workspace."
            )
        return True

    # -- size ---------------------------------------------------------------------------

    def check_file_size(self, name: str, size: int) -> None:
        """Refuse (FileTooLarge) a new content of size bytes for the editable file name."""
        self.policy.check_file_size(name, size)

    # -- resolving ------------------------------------------------------------------------

    def resolve_editable(self, name: str) -> Path:
        """The path of an editable file (which may not exist yet), after every check."""
        plain = self._editable_name(name)
        path = self.root / plain
        self._check_on_disk(plain, path)
        return path

    def resolve_readable(self, name: str) -> Path:
        """The path of an existing editable or reference file, after every check."""
        plain = self._plain_name(name)
        if plain in self.policy.editable:
            path = self.root / plain
            if not self._check_on_disk(plain, path):
                raise PathRefused(
                    f"{plain!r} does not exist in the workspace yet. "
                    "Ask the operator to reset the workspace."
                )
            return path
        if plain in self.policy.reference:
            return self.policy.reference[plain]
        raise PathRefused(
            f"{_shown(plain)} is not a file of this workspace. {self._names_listing()}"
        )

    # -- reading ---------------------------------------------------------------------------

    def _read_editable(self, name: str) -> bytes | None:
        """Bytes of an editable file without following links (None when it is missing)."""
        path = self.resolve_editable(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:  # ELOOP: became a symlink after the check
            raise PathRefused(
                f"{name!r} is refused: it cannot be opened safely ({error.strerror}). "
                "Ask the operator to reset the workspace."
            ) from error
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
                raise PathRefused(
                    f"{name!r} is refused: it is not a plain regular file. "
                    "Ask the operator to reset the workspace."
                )
            with os.fdopen(fd, "rb", closefd=False) as stream:
                return stream.read()
        finally:
            os.close(fd)

    def read_bytes(self, name: str) -> bytes:
        """The bytes of an editable or reference file."""
        plain = self._plain_name(name)
        if plain in self.policy.editable:
            data = self._read_editable(plain)
            if data is None:
                raise PathRefused(
                    f"{plain!r} does not exist in the workspace yet. "
                    "Ask the operator to reset the workspace."
                )
            return data
        return self.resolve_readable(plain).read_bytes()

    def read_text(self, name: str) -> str:
        """The text of an editable or reference file (invalid UTF-8 shown as U+FFFD)."""
        return self.read_bytes(name).decode("utf-8", errors="replace")

    def list_files(self) -> list[FileEntry]:
        """Every file the agent may see: editable ones first, then reference files."""
        entries = []
        for name in self.policy.editable:
            data = self._read_editable(name)
            if data is not None:
                entries.append(FileEntry(name, "editable", len(data), _count_lines(data)))
        for name, path in self.policy.reference.items():
            if name in self.policy.editable or not path.is_file():
                continue
            data = path.read_bytes()
            entries.append(FileEntry(name, "readable", len(data), _count_lines(data)))
        return entries

    def snapshot(self) -> dict[str, bytes]:
        """The current bytes of every editable file that exists, by name."""
        files = {}
        for name in self.policy.editable:
            data = self._read_editable(name)
            if data is not None:
                files[name] = data
        return files

    def code_hash(self) -> str:
        """A stable sha256 (hex) of the editable files: same names and bytes, same hash."""
        return hash_files(self.snapshot())

    @staticmethod
    def hash_files(files: Mapping[str, bytes]) -> str:
        """The code hash of a set of files, as `code_hash` computes it for a workspace."""
        return hash_files(files)

    # -- writing ---------------------------------------------------------------------------

    def replace_files(self, files: Mapping[str, bytes]) -> None:
        """Replace editable files all-or-nothing.

        Every name and every size is checked first (FileTooLarge over the cap). New contents
        go to temporary files in the workspace (fsynced), then each is renamed over its
        target. If any step fails, the files already replaced get their original bytes back
        and the error is raised.
        """
        targets: dict[str, Path] = {}
        for name, content in files.items():
            if not isinstance(content, bytes):
                raise TypeError(f"content for {name!r} must be bytes")
            plain = self._editable_name(name)
            self.check_file_size(plain, len(content))
            targets[plain] = self.resolve_editable(plain)
        originals = {name: self._read_editable(name) for name in targets}

        staged: dict[str, Path] = {}
        replaced: list[str] = []
        try:
            for name, content in files.items():
                plain = self._plain_name(name)
                mode = 0o644
                with contextlib.suppress(FileNotFoundError):
                    mode = stat.S_IMODE(os.lstat(targets[plain]).st_mode)
                staged[plain] = _write_temp_file(self.root, plain, content, mode)
            for name, temp in staged.items():
                self._install(temp, targets[name])
                replaced.append(name)
        except BaseException:
            for name in reversed(replaced):
                self._restore(name, targets[name], originals[name])
            raise
        finally:
            for temp in staged.values():
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
        _fsync_directory(self.root)

    def _install(self, temp: Path, target: Path) -> None:
        """Move one staged file over its target (a single atomic rename)."""
        os.replace(temp, target)

    def _restore(self, name: str, target: Path, original: bytes | None) -> None:
        """Put back a file's original bytes (or remove it if it did not exist)."""
        if original is None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            return
        temp = _write_temp_file(self.root, name, original, 0o644)
        os.replace(temp, target)


def _write_temp_file(folder: Path, name: str, content: bytes, mode: int) -> Path:
    """Write content to a new, fsynced temporary file in folder and return its path."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as stream:
            stream.write(content)
            stream.flush()
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(temp_name).unlink(missing_ok=True)
        raise
    os.close(fd)
    return Path(temp_name)


def _write_new_file(path: Path, content: bytes, mode: int) -> None:
    """Create path (which must not exist) with content, never following links."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as stream:
            stream.write(content)
            stream.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
