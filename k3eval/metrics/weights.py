"""Weights files of the feature networks: where they are looked for, their checksums, synthetic stand-ins.

Real weights: the official TF-ported Inception file from the torch hub cache (`$TORCH_HOME/hub/checkpoints/`), a
path given with `--inception-weights`, or a download when online. Its sha256 is always recorded and compared with
the official file's; any other file (the synthetic weights of the tests and the demo, a re-export) is accepted
with a warning and marked `standard_weights: false`, because its FID is not comparable with published numbers.

Synthetic weights (`synthetic`): the real architectures with seeded random weights, built once into
`$K3EVAL_CACHE/weights/` in the real file formats and loaded back through the real loading code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from k3eval.errors import UserError
from k3eval.utils import atomic_write_bytes, cache_dir, file_lock, sha256_file

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
# sha256 of torch-fidelity's release file, as recorded by a third-party project that pins it; the file name carries
# its first 8 hex digits (torch hub convention), which is what is checked when the full digest is unknown.
OFFICIAL_INCEPTION_SHA256 = {"6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"}
OFFICIAL_INCEPTION_PREFIX = "6726825d"
SYNTHETIC = "synthetic"
SYNTHETIC_VERSION = "v2"  # bump when a synthetic builder changes, so cached files are rebuilt


@dataclass(frozen=True)
class WeightsInfo:
    """A resolved weights file: where it is, its sha256, and whether it is the official file."""

    path: Path
    sha256: str
    standard: bool
    synthetic: bool

    def fingerprint(self) -> dict:
        return {"weights": self.path.name, "sha256": self.sha256, "standard_weights": self.standard,
                "synthetic_weights": self.synthetic}


def weights_dir() -> Path:
    p = cache_dir() / "weights"
    p.mkdir(parents=True, exist_ok=True)
    return p


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("K3EVAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def synthetic_inception_path(seed: int = 0) -> Path:
    """The seeded random-weight Inception file (exactly the keys torch-fidelity loads), built on first use."""
    import io

    import torch

    from k3eval.metrics.inception import build_synthetic_inception

    path = weights_dir() / f"synthetic-inception-{SYNTHETIC_VERSION}-seed{seed}.pth"
    if path.exists():
        return path
    with file_lock(weights_dir() / ".inception.lock"):
        if not path.exists():
            buf = io.BytesIO()
            torch.save(build_synthetic_inception(seed), buf)
            atomic_write_bytes(path, buf.getvalue())
    return path


def resolve_inception_weights(spec: str | None) -> WeightsInfo:
    """`spec`: a file path, 'synthetic', or None (torch hub cache, else download when online).

    Offline without the file: a UserError naming the file and where to put it.
    """
    if spec == SYNTHETIC:
        p = synthetic_inception_path()
        return WeightsInfo(p, sha256_file(p), False, True)
    if spec:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise UserError(f"--inception-weights: file not found: {p} (give the path of "
                            f"{INCEPTION_FILES[0]}, or 'synthetic' for seeded random test weights)")
    else:
        hub = torch_hub_checkpoints()
        found = [hub / n for n in INCEPTION_FILES if (hub / n).is_file()]
        if found:
            p = found[0]
        elif offline():
            raise UserError(f"Inception weights not found and downloads are off: put {INCEPTION_FILES[0]} "
                            f"(from {INCEPTION_URL}) into {hub}/, or pass --inception-weights PATH")
        else:
            p = _download(INCEPTION_URL, hub / INCEPTION_FILES[0])
    digest = sha256_file(p)
    # torch hub names a checkpoint after the first 8 hex digits of its content's sha256 (and checks them on download),
    # so a file whose digest starts with them is the official one even if the full pinned digest were mistyped.
    standard = digest in OFFICIAL_INCEPTION_SHA256 or digest.startswith(OFFICIAL_INCEPTION_PREFIX)
    # A copy of the synthetic file given by path is still synthetic: recognised by the name it was built under.
    return WeightsInfo(p, digest, standard, p.name.startswith("synthetic-inception-"))


def _download(url: str, dst: Path) -> Path:
    import torch

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    except Exception as e:  # network errors come as many types (URLError, HTTPError, OSError, ssl errors)
        raise UserError(f"could not download {url} ({type(e).__name__}: {e}); put {dst.name} into {dst.parent}/ "
                        "by hand, or pass --inception-weights PATH") from None
    return dst


def load_inception_state(info: WeightsInfo) -> dict:
    """Load the state dict and check it has exactly the keys and shapes of the TF-ported Inception."""
    import torch

    from k3eval.metrics.inception import InceptionV3Compat

    try:
        state = torch.load(info.path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors for files that are not checkpoints
        raise UserError(f"{info.path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise UserError(f"{info.path}: expected a state dict, got {type(state).__name__}")
    expected = {k: tuple(v.shape) for k, v in InceptionV3Compat().state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
                         f"instead of {expected[wrong[0]]})")
        raise UserError(f"{info.path} is not a TF-ported Inception-v3 weights file (the keys torch-fidelity loads): "
                        + "; ".join(parts))
    return state
