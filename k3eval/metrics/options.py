"""Values of the score options checked without torch or any model, so that a mistake is reported at once (and a
benchmark's `metrics:` section can be checked before any stage runs)."""

from __future__ import annotations

from k3eval.errors import UserError

PROTOCOLS: dict[str, str] = {
    "clean": "PIL bicubic per channel in float32, no re-quantisation (clean-fid 'clean')",
    "tf": "TensorFlow 1.x bilinear, align_corners=False, no antialias (torch-fidelity, pytorch-fid)",
}
DTYPES = ("float32", "float64")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: unknown value {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    return protocol


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown value {dtype!r}; accepted: {', '.join(DTYPES)}")
    return dtype


def parse_synthetic(spec: str, what: str) -> int | None:
    """N of a `synthetic:N` reference (None for any other spec); `what` names the option in the error."""
    if not spec.startswith("synthetic:"):
        return None
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 2:
        raise UserError(f"{what}: 'synthetic:N' needs an integer N >= 2, got {spec!r}")
    return n


def synthetic_reference_warning(n: int) -> str:
    return f"reference is {n} synthetic seeded images (demo only): FID, KID and CMMD values mean nothing"
