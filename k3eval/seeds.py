"""The seed rule: one seed per (benchmark seed, prompt id, sample), shared by every generator.

Why a hash and not a counter: the seed of an image must not depend on the order of prompts, the batch size, the
number of processes or which generator runs, so that image i of prompt p is paired across generators.
"""

from __future__ import annotations

import hashlib

SEED_RULE = "int.from_bytes(sha256(f'{benchmark_seed}:{prompt_id}:{sample}')[:8], 'big') & (2**63 - 1)"


def image_seed(benchmark_seed: int, prompt_id: str, sample: int) -> int:
    """Seed of one image, in [0, 2**63): fits int64 columns and `torch.Generator.manual_seed`."""
    digest = hashlib.sha256(f"{benchmark_seed}:{prompt_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def cpu_noise(seed: int, shape: tuple[int, ...]):
    """Initial noise drawn on the CPU from `seed` in float32, so it is the same on every device and dtype."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)
