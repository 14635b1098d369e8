"""Where the weights of the learned metrics come from: a local path, the Hugging Face cache (downloaded when online),
or a URL cached in the torch hub folder; and their sha256, which goes into every fingerprint.

Offline (`K3EVAL_OFFLINE`, `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` set, or no network), a file that is not cached
is a UserError that names the hub id and file (or URL), where to put it, and the `--set NAME.KEY=PATH` that takes a
local copy instead. Hashing a multi-gigabyte checkpoint on every scoring would dominate a rescoring, so digests are
recorded with the file's size and modification time (the same record the image checks keep) and recomputed only
when one of them changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from k3eval.errors import UserError
from k3eval.metrics.weights import offline

# the files a transformers model folder needs besides its weights (configs, tokenizers, processors, chat templates)
MODEL_FOLDER_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def _hint(option: str, what: str) -> str:
    return (f"download it once on a connected machine into the Hugging Face cache (~/.cache/huggingface/hub, or "
            f"$HF_HOME), or pass {option}=PATH with a local {what}; 'synthetic' gives seeded random test weights")


def hub_file(repo_id: str, filename: str, option: str) -> Path:
    """`filename` of the hub repo `repo_id`, from the Hugging Face cache, else downloaded when online."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline()))
    except Exception as e:  # hub, network and file errors: the file is not available here
        raise UserError(f"{option}: cannot get {filename} of the Hugging Face repo {repo_id} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        + _hint(option, "copy of the file")) from None


def hub_folder(repo_id: str, option: str, weights: bool = True) -> Path:
    """A local folder holding a transformers model (or, `weights=False`, only its processor and tokenizer files):
    `repo_id` itself when it is a folder, else its snapshot in the Hugging Face cache (configs, tokenizer files and
    safetensors weights, or .bin weights when the repo has no safetensors), downloaded when online."""
    p = Path(repo_id).expanduser()
    if p.is_dir():
        return p
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo_id):
        raise UserError(f"{option}: {repo_id!r} is neither a folder nor a Hugging Face repo id (owner/name)")
    from huggingface_hub import snapshot_download

    what = "folder saved with save_pretrained"
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
        if not weights or weight_files(folder):
            return folder
    except Exception:  # not cached (or only partly): fetched below when online
        pass
    if offline():
        raise UserError(f"{option}: the Hugging Face repo {repo_id} is not in the Hugging Face cache and downloads are "
                        "off; " + _hint(option, what))
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=MODEL_FOLDER_FILES + ["*.safetensors"] * weights))
        if weights and not weight_files(folder):
            folder = Path(snapshot_download(repo_id, allow_patterns=[*MODEL_FOLDER_FILES, "*.bin"]))
    except Exception as e:  # hub and network errors
        raise UserError(f"{option}: cannot download the Hugging Face repo {repo_id} ({type(e).__name__}: {e}); "
                        + _hint(option, what)) from None
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The weights of a transformers folder: its safetensors files, else its .bin files (sorted)."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def url_file(url: str, filename: str, option: str) -> Path:
    """A file published at `url`, cached as `filename` in the torch hub checkpoints folder (downloaded when online)."""
    from k3eval.metrics.weights import _download, torch_hub_checkpoints

    hub = torch_hub_checkpoints()
    path = hub / filename
    if path.is_file():
        return path
    if offline():
        raise UserError(f"{option}: {filename} is not in {hub}/ and downloads are off: download it from {url} into "
                        f"that folder, or pass {option}=PATH; 'synthetic' gives seeded random test weights")
    return _download(url, path)


def local_file(spec: str, option: str, what: str) -> Path:
    """A file the user named; a UserError naming the option when it does not exist."""
    p = Path(spec).expanduser()
    if not p.is_file():
        raise UserError(f"{option}: file not found: {p} (give the path of {what}, or 'synthetic' for seeded random "
                        "test weights)")
    return p


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, recomputed only when its size or modification time changed."""
    from k3eval.metrics.cache import default_root
    from k3eval.metrics.verify import FileHashes

    p = Path(path).resolve()
    hashes = FileHashes(p.parent, default_root())
    digest = hashes.digest(p)
    hashes.save()
    return digest


def folder_sha256(folder: Path, weights: bool = True) -> str:
    """One digest of a transformers folder: the names and sha256s of its weight files (`weights=True`) and of its
    config, tokenizer and processor files."""
    import hashlib

    files = weight_files(folder) if weights else []
    if weights and not files:
        raise UserError(f"{folder}: no *.safetensors or *.bin weights in this folder")
    small = sorted({f for pat in MODEL_FOLDER_FILES for f in folder.glob(pat) if f.is_file()})
    h = hashlib.sha256()
    for f in [*files, *small]:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()
