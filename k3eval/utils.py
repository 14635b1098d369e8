"""Small shared helpers: atomic writes that follow the umask, output folders, devices, hashing, environment facts."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from k3eval.errors import UserError


@contextlib.contextmanager
def file_lock(path: str | Path):
    """An exclusive advisory lock on `path` (created if missing) for as long as the block runs: several processes
    that start together (torchrun ranks, test workers) then build a cached file or merge a run only once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(folder: str | Path, lock: str | Path, build: Callable[[Path], None], marker: str = "ok\n") -> Path:
    """`folder`, made by `build(tmp)` the first time it is asked for and reused after: under the file lock `lock` (so
    processes that start together build it once), into a hidden sibling folder that gets a `.complete` marker (text
    `marker`) and is then renamed into place. A build that stops half-way leaves only that sibling, which the next
    call removes and builds again; a folder without the marker is never returned."""
    import shutil

    folder = Path(folder)
    if (folder / ".complete").exists():
        return folder
    with file_lock(lock):
        if (folder / ".complete").exists():
            return folder
        tmp = folder.with_name(f".{folder.name}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").write_text(marker)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (setting it, even for a moment,
    would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    """The mode of a file k3eval writes: 0o666 less the umask, like any other tool's output; 0o600 for secrets."""
    return 0o600 if private else 0o666 & ~current_umask()


def write_then_rename(path: str | Path, data: bytes, *, fsync: bool = True, private: bool = False) -> None:
    """Write `data` to a temporary file next to `path` and rename it into place, so that readers see either the old
    file or the complete new one. The file follows the user's umask (temporary files are created 0600, which would
    otherwise stick after the rename), or is 0600 with `private` (files holding secret tokens)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode(private))
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> None:
    """Write `data` to `path` atomically and durably (fsync'd); see `write_then_rename`."""
    write_then_rename(path, data, private=private)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_output_dir(path: str | Path, arg: str = "--out") -> Path:
    """Refuse, before anything is written, an output folder that cannot be one: an existing file, a path under a
    file, or a place where no folder can be made (read-only, no permission, /proc). Leaves nothing behind: the
    probe folder it makes in the nearest existing folder is removed at once."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{arg} {p}: this is a file, not a folder; choose another {arg}")
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{arg} {p}: {probe} is a file, so no folder can be made under it; choose another {arg}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".k3eval-probe-"))
    except OSError as e:
        raise UserError(f"{arg} {p}: cannot write in {probe} ({e.strerror}); choose another {arg}") from None
    return p


def make_dirs(path: str | Path) -> list[Path]:
    """`mkdir -p path`; returns the folders it created, outermost first, so that a command failing before its first
    result can remove them again (`remove_empty_dirs`)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_empty_dirs(created: Iterable[Path]) -> None:
    """Remove the folders `make_dirs` created, innermost first, leaving any that something else has filled."""
    for d in reversed(list(created)):
        try:
            d.rmdir()
        except OSError:
            return


def check_device(device: str, arg: str = "--device", available: bool = True) -> str:
    """Refuse a torch device string that torch does not know (`banana`), or, with `available`, a device this
    machine does not have (`cuda` without a GPU, `cuda:3` on a 2-GPU machine). Imports torch."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{arg}: unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if not available or dev.type == "cpu":
        return device
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"{arg} {device}: no CUDA GPU is usable here (torch {torch.__version__}, CUDA build "
                            f"{torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"{arg} {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return device
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise UserError(f"{arg} {device}: no {dev.type} device is available here; use --device cpu")
    return device


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages that shape results (and any extra `names`)."""
    base = ["k3eval", "torch", "torchvision", "diffusers", "transformers", "accelerate", "numpy", "Pillow",
            "torchmetrics", "torch-fidelity", "open-clip-torch", "scipy"]
    out = {}
    for name in [*base, *names]:
        try:
            out[name] = _version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _version(name: str) -> str:
    """`importlib.metadata.version(name)` without parsing the whole metadata file (it is an email message, and
    parsing a dozen of them took a quarter of a cached rescoring): the `Version:` header is among the first lines."""
    dist = metadata.distribution(name)
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
        if not line.strip():  # end of the headers
            break
    return dist.version


def git_revision(path: str | Path | None = None) -> str | None:
    """The git revision of the k3eval checkout (with '-dirty' when it has changes), or None outside git."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware_info() -> dict[str, Any]:
    """CPU, memory and accelerator facts for run.json (imports torch only if it is already imported)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        pass
    return info


def cache_dir() -> Path:
    """Where k3eval keeps built tiny models and caches: $K3EVAL_CACHE, else ~/.cache/k3eval."""
    root = os.environ.get("K3EVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "k3eval")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
