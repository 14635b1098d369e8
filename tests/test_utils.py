"""Shared helpers: written files follow the umask (secrets stay private), output folders and devices are checked
before anything is written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from k3eval.errors import UserError
from k3eval.utils import (
    atomic_write_bytes,
    atomic_write_text,
    check_device,
    check_output_dir,
    current_umask,
    make_dirs,
    remove_empty_dirs,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "sub" / "b.txt", "y")
    atomic_write_text(tmp_path / "links.txt", "secret", private=True)
    assert _mode(tmp_path / "a.bin") == expected and _mode(tmp_path / "sub" / "b.txt") == expected
    assert _mode(tmp_path / "links.txt") == 0o600  # secret tokens stay private whatever the umask
    assert (tmp_path / "sub" / "b.txt").read_text() == "y"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_imported_run_follows_the_umask(tmp_path, umask):
    from k3eval.importer import import_images
    from k3eval.prompts.core import Prompt, PromptSet

    images = tmp_path / "export"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(images / f"{k}.png")
    (tmp_path / "map.csv").write_text("file,prompt_id\n0.png,a\n1.png,b\n")
    prompts = PromptSet("t", [Prompt("a", "a red cube"), Prompt("b", "a blue ball")])
    umask(0o022)
    out = tmp_path / "runs" / "imported"
    import_images(images, tmp_path / "map.csv", prompts, out, name="sys")
    for p in [out, *out.rglob("*")]:
        assert _mode(p) == (0o755 if p.is_dir() else 0o644), p


def test_score_and_report_outputs_follow_the_umask_through_the_shared_writer(tmp_path):
    """The metrics and report stages write through `atomic_write_bytes`; a child process with umask 002 (a shared
    group folder) gets group-writable files from it, as from any other tool."""
    code = ("import os; os.umask(0o002)\nfrom k3eval.utils import atomic_write_json\n"
            f"atomic_write_json({str(tmp_path / 'summary.json')!r}, {{'n': 1}})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert _mode(tmp_path / "summary.json") == 0o664


def test_check_output_dir(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_dir(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # the probe leaves nothing
    with pytest.raises(UserError, match=r"--out .*file.txt: this is a file, not a folder"):
        check_output_dir(tmp_path / "file.txt")
    with pytest.raises(UserError, match=r"report.out .*file.txt/x: .*file.txt is a file, so no folder can be made"):
        check_output_dir(tmp_path / "file.txt" / "x", "report.out")
    with pytest.raises(UserError, match=r"cannot write in /proc"):
        check_output_dir("/proc/k3eval-test/out")


def test_make_dirs_and_remove_empty_dirs(tmp_path):
    created = make_dirs(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a" / "b") == []
    (tmp_path / "a" / "keep.txt").write_text("someone else's")
    remove_empty_dirs(created)
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()


def test_check_device():
    import torch

    assert check_device("cpu") == "cpu"
    for bad in ("banana", "cuda:x", ""):
        with pytest.raises(UserError, match=f"--device: unknown device '{bad}'"):
            check_device(bad)
    assert check_device("cuda", available=False) == "cuda"  # a benchmark's device, for a stage not run now
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        assert check_device("cuda") == "cuda" and check_device(f"cuda:{n - 1}") == f"cuda:{n - 1}"
        with pytest.raises(UserError, match=f"--device cuda:{n}: this machine has {n} CUDA device"):
            check_device(f"cuda:{n}")
    else:
        with pytest.raises(UserError, match="--device cuda:1: no CUDA GPU is usable here"):
            check_device("cuda:1")
    with pytest.raises(UserError, match="--device xla: no xla device is available here"):
        check_device("xla")


def test_build_once_builds_once_and_never_returns_a_half_built_folder(tmp_path):
    from k3eval.utils import build_once

    calls = []

    def failing(tmp):
        (tmp / "part").write_text("half")
        raise RuntimeError("stopped")

    def good(tmp):
        calls.append(tmp)
        (tmp / "model.bin").write_text("weights")

    folder, lock = tmp_path / "model-v1", tmp_path / ".model.lock"
    with pytest.raises(RuntimeError):
        build_once(folder, lock, failing)
    assert not folder.exists()  # only the hidden building folder is left behind
    assert build_once(folder, lock, good, marker="seed 3\n") == folder
    assert (folder / "model.bin").read_text() == "weights" and (folder / ".complete").read_text() == "seed 3\n"
    assert not (folder / "part").exists() and sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model-v1"]
    assert build_once(folder, lock, good) == folder and len(calls) == 1


def test_package_versions_read_the_version_header_as_importlib_does():
    from importlib import metadata

    from k3eval.utils import package_versions

    got = package_versions(["pandas", "no-such-package-k3eval"])
    assert "no-such-package-k3eval" not in got and {"torch", "numpy", "pandas", "k3eval"} <= set(got)
    assert all(v == metadata.version(k) for k, v in got.items())
