"""Bad generator parameters on the command line: each is one clean error line (exit 2, no traceback) given before
anything is loaded or allocated, and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BAD = {
    "height beyond the bound": ("tiny-kandinsky3", "height=100000000", "must be between 1 and 4096"),
    "width beyond the bound": ("tiny-kandinsky3-released", "width=5000", "must be between 1 and 4096"),
    "a size the SD pipeline refuses": ("tiny-sd", "height=63", "must be a multiple of 8"),
    "too many steps": ("tiny-sdxl", "steps=100000", "must be between 1 and 1000"),
    "unknown negative mode": ("tiny-kandinsky3-released", "negative_mode=cut", "use one of release, pad"),
    "unknown noise rule": ("tiny-kandinsky3-flash", "noise=gpu", "use one of cpu, release"),
    "unknown projection dtype": ("tiny-kandinsky3-released", "projection_dtype=fp8", "use one of text_encoder, unet"),
    "refiner split outside (0, 1)": ("tiny-sdxl", "high_noise_frac=2", "must be between 0 and 1"),
    "T5 context beyond the tokenizer": ("tiny-pixart", "max_sequence_length=100000", "between 1 and 512"),
    "zero groups": ("tiny-kandinsky3-released", "groups=0", "must be at least 1"),
}


@pytest.mark.parametrize("why", list(BAD))
def test_bad_generator_parameter_is_one_clean_line(tmp_path, why):
    generator, setting, expected = BAD[why]
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "k3eval", "generate", generator, "--prompts", "parti", "--limit", "1",
                           "--out", str(out), "--set", setting, "--quiet"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text and expected in text, text
    assert len([line for line in proc.stderr.splitlines() if line.startswith("k3eval: error:")]) == 1, text
    assert not out.exists() and list(tmp_path.iterdir()) == []
