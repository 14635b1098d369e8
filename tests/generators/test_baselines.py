"""Baselines: every registered one has a tiny counterpart that generates, and the real entries' classes run on the
tiny folders (pointed at with `model=`), so the code a GPU user runs is the code tested here."""

from __future__ import annotations

import numpy as np
import pytest

from k3eval.errors import UserError
from k3eval.generate import generate_run
from k3eval.generators import all_entries, get_entry
from k3eval.generators.base import GenRequest
from k3eval.generators.registry import load_catalog_file
from k3eval.generators.tiny import TINY_BUILDERS, tiny_folder
from k3eval.prompts.core import Prompt, PromptSet
from k3eval.runs import RunFolder

BASELINES = {"kandinsky22": "tiny-kandinsky22", "sdxl": "tiny-sdxl", "sd15": "tiny-sd", "sd21": "tiny-sd",
             "pixart-alpha": "tiny-pixart", "pixart-sigma": "tiny-pixart"}
SMALL = {"height": 64, "width": 64, "steps": 2}
PROMPTS = PromptSet("b", [Prompt("b0", "a blue vase with tulips", "x"), Prompt("b1", "a dog on a skateboard", "y")])
REQUESTS = [GenRequest("b0", "a blue vase with tulips", 0, 11), GenRequest("b1", "a dog on a skateboard", 0, 12)]


def _catalog():
    from importlib import resources

    path = resources.files("k3eval.generators").joinpath("catalog/baselines.yaml")
    return load_catalog_file(str(path))


def test_every_baseline_is_registered_with_model_card_defaults_and_a_tiny_counterpart():
    catalog = _catalog()
    real = {n for n, e in catalog.items() if not e.offline}
    assert real == set(BASELINES)
    entries = all_entries()
    for name, tiny in BASELINES.items():
        assert entries[tiny].offline and entries[tiny].family == entries[name].family
        params = entries[name].create().describe()["params"]
        for key in ("model", "pipeline_class", "height", "width", "steps", "guidance", "scheduler"):
            assert params[key] not in (None, ""), (name, key)
    assert entries["sdxl"].params["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert entries["kandinsky22"].params["prior_model"] == "kandinsky-community/kandinsky-2-2-prior"
    assert entries["pixart-sigma"].params["pipeline_class"] == "PixArtSigmaPipeline"


@pytest.mark.parametrize("tiny", ["tiny-sdxl", "tiny-kandinsky22", "tiny-pixart"])
def test_tiny_counterpart_generates_a_run(tmp_path, tiny):
    gen = get_entry(tiny).create()
    summary = generate_run(gen, PROMPTS, tmp_path / tiny, batch_size=2, seed=3, progress=False)
    assert summary.status_counts == {"ok": 2}
    run = RunFolder(tmp_path / tiny)
    info = run.read_info()
    assert info["generator"]["weights"]["random_weights"] and info["generator"]["offline"]
    assert info["generator"]["params"]["steps"] == 2
    # Batch invariance: the second image made alone matches the one made in the batch.
    alone = gen.generate([GenRequest("b1", PROMPTS[1].text, 0, int(run.read_manifest()["seed"][1]))])[0].image
    from PIL import Image

    batched = np.asarray(Image.open(run.image_path(run.read_manifest().iloc[1])), dtype=np.float32) / 255
    assert np.abs(alone - batched).max() <= 1.5 / 255
    gen.close()


def _folder(tiny: str) -> str:
    if tiny == "tiny-sd":
        return str(tiny_folder("tiny-sd", TINY_BUILDERS["tiny-sd"]))
    return str(get_entry(tiny).create().tiny_path())


@pytest.mark.parametrize("name", ["sd15", "sd21", "pixart-alpha", "pixart-sigma"])
def test_real_entry_runs_on_local_tiny_weights(name):
    extra = {"safety_checker": False} if name.startswith("sd") else {}
    if name == "sd15":
        extra["steps"] = 4  # PNDM's warm-up (Runge-Kutta) steps need at least 4 steps
    gen = get_entry(name).create({**SMALL, "model": _folder(BASELINES[name]), **extra})
    out = gen.generate(REQUESTS)
    assert len(out) == 2 and all(o.image.shape == (64, 64, 3) and np.isfinite(o.image).all() for o in out)
    assert type(gen.pipe).__name__ == gen.params["pipeline_class"]
    assert type(gen.pipe.scheduler).__name__ == gen.params["scheduler"]  # the model card's scheduler is applied
    if name.startswith("sd"):
        assert gen.pipe.safety_checker is None
    gen.close()


def test_sdxl_with_and_without_refiner():
    folder = _folder("tiny-sdxl")
    base = get_entry("sdxl").create({**SMALL, "model": folder})
    plain = base.generate(REQUESTS[:1])[0].image
    assert type(base.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    refined = get_entry("sdxl").create({**SMALL, "steps": 4, "model": folder, "refiner": True,
                                        "refiner_model": folder})
    first = refined.generate(REQUESTS[:1])[0].image
    assert refined.refiner is not None and refined.refiner.vae is refined.pipe.vae  # shared, as the card loads it
    assert refined.describe()["weights"]["refiner"] == folder
    assert np.isfinite(first).all() and np.abs(first - plain).max() > 0.01
    assert np.array_equal(first, refined.generate(REQUESTS[:1])[0].image)  # seeded: same request, same image
    with pytest.raises(UserError, match="high_noise_frac.*between 0 and 1"):
        get_entry("sdxl").create({"model": folder, "refiner": True, "high_noise_frac": 1.5}).ensure_loaded()


def test_kandinsky22_prior_and_decoder_with_negative_prompt():
    folder = _folder("tiny-kandinsky22")
    gen = get_entry("kandinsky22").create({**SMALL, "prior_steps": 2, "model": f"{folder}/decoder",
                                           "prior_model": f"{folder}/prior"})
    plain = gen.generate(REQUESTS)
    assert type(gen.prior).__name__ == "KandinskyV22PriorPipeline" and gen.describe()["weights"]["prior"]
    neg = get_entry("kandinsky22").create({**SMALL, "prior_steps": 2, "model": f"{folder}/decoder",
                                           "prior_model": f"{folder}/prior", "negative_prompt": "low quality"})
    with_neg = neg.generate(REQUESTS)
    assert all(np.isfinite(o.image).all() for o in with_neg)
    assert np.abs(with_neg[0].image - plain[0].image).max() > 0.0  # the negative prompt reaches the prior


def test_any_diffusers_pipeline_by_id_or_folder():
    gen = get_entry(f"diffusers:{_folder('tiny-sd')}").create(SMALL)
    out = gen.generate(REQUESTS[:1])
    assert type(gen.pipe).__name__ == "StableDiffusionPipeline" and np.isfinite(out[0].image).all()


def test_missing_weights_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="cannot load weights 'stabilityai/stable-diffusion-xl-base-1.0'.*"
                                        "huggingface-cli download"):
        get_entry("sdxl").create().ensure_loaded()
