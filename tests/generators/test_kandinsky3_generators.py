"""The Kandinsky 3 generators end to end on tiny components: `k3eval generate`, instrumentation, the shared prompt
embedding cache, batch independence, offload, and the bad-input messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from k3eval.errors import UserError
from k3eval.generate import generate_run
from k3eval.generators.base import GenRequest
from k3eval.generators.registry import get_entry
from k3eval.prompts import load_prompt_set
from k3eval.runs import RunFolder

SHORT, LONG = "a cat", "a very detailed oil painting of a lighthouse on a cliff at sunset with seagulls"


def _gen(name: str, **params):
    return get_entry(name).create(params)


@pytest.fixture(scope="module")
def kandinsky3_released():
    return _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none")


def test_released_and_flash_generate_runs_sharing_the_text_cache(tmp_path):
    prompts = load_prompt_set("parti").select(limit=3)
    cache = tmp_path / "emb"
    rel = _gen("tiny-kandinsky3-released", steps=2, embedding_cache=str(cache))
    s = generate_run(rel, prompts, tmp_path / "rel", samples=2, batch_size=2, progress=False)
    assert s.generated == 6 and s.status_counts == {"ok": 6}
    # each prompt encoded once for its two samples, and written to the disk cache
    assert rel.cache.misses == 3 and len(list(cache.rglob("*.safetensors"))) == 3
    df = RunFolder(tmp_path / "rel").read_manifest()
    assert set(df["unet_evals"]) == {4}  # 2 guided steps = 4 U-Net evaluations per image
    for col in ("text_seconds", "denoise_seconds", "decode_seconds"):
        assert (df[col] >= 0).all()
    assert df["peak_memory_mb"].isna().all()  # no accelerator
    assert (df["denoise_seconds"] > 0).all()
    totals = json.loads((tmp_path / "rel" / "run.json").read_text())["totals"]
    assert totals["unet_evals_mean"] == 4.0 and totals["denoise_seconds_mean"] > 0

    flash = _gen("tiny-kandinsky3-flash", embedding_cache=str(cache))
    generate_run(flash, prompts, tmp_path / "flash", samples=1, batch_size=3, progress=False)
    # Flash reuses the encoder output of the 3.0 run (its projection differs, the T5 output does not)
    assert flash.cache.hits == 3 and flash.cache.misses == 0 and flash.text_encoder is None
    fdf = RunFolder(tmp_path / "flash").read_manifest()
    assert set(fdf["unet_evals"]) == {4} and set(fdf["steps"]) == {4} and fdf["guidance"].isna().all()
    info = json.loads((tmp_path / "flash" / "run.json").read_text())
    assert info["generator"]["weights"]["sampler"] == "flash"
    assert info["generator"]["weights"]["embedding_cache"]["hits"] == 3
    # the same prompt and seed give different images through 3.0 and Flash
    a = np.asarray(RunFolder(tmp_path / "rel").path.joinpath(df["path"][0]).read_bytes())
    b = np.asarray(RunFolder(tmp_path / "flash").path.joinpath(fdf["path"][0]).read_bytes())
    assert a.tobytes() != b.tobytes()


def test_image_does_not_depend_on_its_batch(kandinsky3_released):
    # tolerance: float noise of batched kernels (~1e-4), far below one 8-bit level (3.9e-3)
    g = kandinsky3_released
    reqs = [GenRequest("p1", SHORT, 0, 11), GenRequest("p2", LONG, 0, 22), GenRequest("p3", "a dog", 0, 33)]
    together = g.generate(reqs)
    for r, out in zip(reqs, together):
        alone = g.generate([r])[0]
        np.testing.assert_allclose(out.image, alone.image, atol=5e-4)
    assert together[0].extra["unet_evals"] == 4
    assert not np.allclose(together[0].image, together[2].image)


def test_negative_prompt_and_seed_change_the_image(kandinsky3_released):
    g = kandinsky3_released
    base = g.generate([GenRequest("p", SHORT, 0, 5)])[0].image
    neg = g.generate([GenRequest("p", SHORT, 0, 5, negative_prompt=LONG)])[0].image
    other_seed = g.generate([GenRequest("p", SHORT, 0, 6)])[0].image
    again = g.generate([GenRequest("p", SHORT, 0, 5)])[0].image
    assert np.array_equal(base, again)
    assert not np.allclose(base, neg, atol=1e-4) and not np.allclose(base, other_seed, atol=1e-4)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_gives_the_same_images(kandinsky3_released, mode):
    req = [GenRequest("p", SHORT, 0, 9)]
    ref = kandinsky3_released.generate(req)[0].image
    off = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none", offload=mode)
    np.testing.assert_allclose(off.generate(req)[0].image, ref, atol=1e-5)
    assert off.describe()["weights"]["offload"] == mode


def test_dtype_per_component(kandinsky3_released):
    import torch

    g = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none", unet_dtype="bf16")
    out = g.generate([GenRequest("p", SHORT, 0, 9)])[0].image
    assert g.unet.dtype == torch.bfloat16 and g.movq.dtype == torch.float32
    assert g.describe()["weights"]["dtypes"] == {"unet": "bfloat16", "text_encoder": "float32", "movq": "float32"}
    ref = kandinsky3_released.generate([GenRequest("p", SHORT, 0, 9)])[0].image
    assert np.isfinite(out).all() and np.abs(out - ref).mean() < 0.1
    with pytest.raises(UserError, match="parameter 'movq_dtype'.*'fp8'"):
        _gen("tiny-kandinsky3-released", movq_dtype="fp8")
    with pytest.raises(UserError, match="parameter 'offload'.*'disk'"):
        _gen("tiny-kandinsky3-released", offload="disk")


def test_sizes_are_rounded_to_multiples_of_64_and_recorded(tmp_path):
    g = _gen("tiny-kandinsky3-flash", height=100, width=64, embedding_cache="none")
    assert g.params["height"] == 128
    generate_run(g, load_prompt_set("parti").select(limit=1), tmp_path / "r", progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert any("height 100 is not a multiple of 64 (MoVQ x8, U-Net x8); rounded up to 128" in w
               for w in info["generator"]["warnings"])
    df = RunFolder(tmp_path / "r").read_manifest()
    assert df["height"].tolist() == [128] and df["width"].tolist() == [64]


def test_flash_warns_that_guidance_is_ignored():
    g = _gen("tiny-kandinsky3-flash", guidance=5.0, steps=50)
    assert any("guidance=5.0, steps=50 ignored" in w for w in g.warnings)
    assert g.params["guidance"] is None and g.params["steps"] == 4
    assert not _gen("tiny-kandinsky3-flash").warnings


@pytest.mark.parametrize("name,file", [("kandinsky3", "weights/kandinsky3.pt"),
                                       ("kandinsky3-flash", "weights/kandinsky3_flash.pt")])
def test_missing_weights_offline_name_the_file_repo_and_option(name, file, fake_hub):
    g = _gen(name)
    with pytest.raises(UserError) as e:
        g.ensure_loaded()
    msg = str(e.value)
    assert file in msg and "ai-forever/Kandinsky3.1" in msg and "--set unet=" in msg
    assert f"hf download ai-forever/Kandinsky3.1 {file}" in msg and "revision main" in msg


def test_missing_local_path_is_named(tmp_path):
    g = _gen("tiny-kandinsky3-released", unet=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="parameter 'unet'.*nope.pt does not exist"):
        g.ensure_loaded()
    g = _gen("tiny-kandinsky3-released", text_encoder=str(tmp_path))
    with pytest.raises(UserError, match="cannot load the tokenizer.*--set text_encoder="):
        g.ensure_loaded()


def test_converted_folder_loads_like_the_checkpoint(tmp_path, kandinsky3_released):
    from k3eval.generators.kandinsky3 import tiny_released_folder
    from k3eval.generators.kandinsky3_convert import convert_checkpoint

    src = tiny_released_folder() / "weights"
    out = convert_checkpoint(src / "kandinsky3.pt", src / "flan_ul2_encoder" / "projection.pt", tmp_path / "c",
                             head_dim=8, groups=4)
    g = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none", unet=str(out))
    req = [GenRequest("p", LONG, 0, 3)]
    np.testing.assert_allclose(g.generate(req)[0].image, kandinsky3_released.generate(req)[0].image, atol=1e-6)
    assert g.describe()["weights"]["loaded"]["unet"]["format"] == "diffusers (converted)"


def test_kandinsky3_diffusers_on_tiny_components(tmp_path):
    from k3eval.generators.kandinsky3 import tiny_pipeline_folder

    g = _gen("kandinsky3-diffusers", model=str(tiny_pipeline_folder()), height=64, width=64, steps=2, variant=None)
    reqs = [GenRequest("p1", SHORT, 0, 11), GenRequest("p2", LONG, 0, 22)]
    outs = g.generate(reqs)
    assert outs[0].image.shape == (64, 64, 3) and outs[0].extra["unet_evals"] == 4
    assert outs[0].extra["denoise_seconds"] > 0
    np.testing.assert_allclose(outs[1].image, g.generate([reqs[1]])[0].image, atol=5e-4)
    rounded = _gen("kandinsky3-diffusers", height=1000)
    assert rounded.params["height"] == 1024 and "rounded up to 1024" in rounded.warnings[0]
    with pytest.raises(UserError, match="offload=model needs a CUDA device, got --device cpu"):
        _gen("kandinsky3-diffusers", offload="model")


def test_k3eval_generate_command_with_beautify(tmp_path, capsys):
    from k3eval.cli import main

    out = tmp_path / "cli"
    rc = main(["generate", "tiny-kandinsky3-flash", "--prompts", "parti", "--limit", "1", "--out", str(out),
               "--beautify", "tiny-lm", "--set", "embedding_cache=none", "--quiet"])
    assert rc == 0 and "1 generated" in capsys.readouterr().out
    df = RunFolder(out).read_manifest()
    assert df["status"].tolist() == ["ok"] and df["beautified_prompt"].notna().all()
    assert df["unet_evals"].tolist() == [4]
    rc = main(["generate", "tiny-kandinsky3-released", "--prompts", "parti", "--limit", "1", "--out",
               str(tmp_path / "bad"), "--set", "offload=disk"])
    assert rc == 2 and "parameter 'offload'" in capsys.readouterr().err


def test_use_components_matches_loaded_weights(kandinsky3_released):
    """The speed benchmark's path: components handed over in memory instead of loaded from files."""
    from k3eval.generators.kandinsky3 import Kandinsky3ReleasedGenerator, tiny_released_folder
    from k3eval.generators.kandinsky3_convert import build_unet, infer_config, load_official_unet, load_projection

    weights = tiny_released_folder() / "weights"
    sd, null = load_official_unet(weights / "kandinsky3.pt")
    proj = load_projection(weights / "flan_ul2_encoder" / "projection.pt")
    unet = build_unet(sd, proj, infer_config(sd, proj, head_dim=8, groups=4))
    g = Kandinsky3ReleasedGenerator("k3-mem", {"height": 64, "width": 64, "steps": 2, "embedding_cache": "none",
                                              "text_encoder_dtype": "fp32"})
    ref = kandinsky3_released
    req = [GenRequest("p", SHORT, 0, 4)]
    expected = ref.generate(req)[0].image  # loads everything, the text encoder included
    g.use_components(unet, null, ref.movq, ref.tokenizer, ref.text_encoder)
    np.testing.assert_allclose(g.generate(req)[0].image, expected, atol=1e-6)


# ---- release fidelity: negative prompts, projection dtype, noise ---------------------------------------------------
def _spy_encode(g, monkeypatch) -> list[list[int]]:
    seen: list[list[int]] = []
    real = g.encode

    def spy(sequences):
        seen.extend(list(s) for s in sequences)
        return real(sequences)

    monkeypatch.setattr(g, "encode", spy)
    return seen


@pytest.mark.parametrize("mode", ["release", "pad"])
def test_negative_prompt_modes(kandinsky3_released, monkeypatch, mode):
    from k3eval.generators.kandinsky3_sampler import release_negative_ids

    g = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none", negative_mode=mode)
    g.ensure_loaded()
    seen = _spy_encode(g, monkeypatch)
    req = GenRequest("p", SHORT, 0, 5, negative_prompt=LONG)
    ((cond, cond_mask, uncond, uncond_mask),), _ = g.build_contexts([req])
    tok = g.tokenizer
    pos, neg = tok(SHORT).input_ids, tok(LONG).input_ids
    assert len(neg) > len(pos) + 3  # the negative prompt is much longer than the prompt
    assert seen[0] == pos
    if mode == "release":  # cut to the prompt's tokens, last one end-of-text, the prompt's mask
        assert seen[1] == release_negative_ids(pos, neg, tok.eos_token_id, tok.pad_token_id) == [*neg[:len(pos) - 1],
                                                                                                   tok.eos_token_id]
        assert uncond.shape == cond.shape and torch.equal(uncond_mask, cond_mask)
    else:  # encoded whole; the prompt's context is padded to its length
        assert seen[1] == neg and uncond.shape[1] == len(neg) + 1 and cond.shape[1] == uncond.shape[1]
        assert int(cond_mask.sum()) == len(pos) and int(uncond_mask.sum()) == len(neg)
    assert g.describe()["weights"]["negative_mode"] == mode
    image = g.generate([req])[0].image
    other = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none",
                 negative_mode="pad" if mode == "release" else "release").generate([req])[0].image
    assert not np.allclose(image, other, atol=1e-4)  # the two rules give different images


def test_projection_and_null_embedding_dtype_follow_the_release():
    import torch.nn.functional as F

    rel = _gen("tiny-kandinsky3-released", embedding_cache="none", text_encoder_dtype="fp16")
    rel.ensure_loaded()
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    ctx, mask = rel.context(hidden)
    lin, norm = rel.projection.projection_linear, rel.projection.projection_norm
    assert lin.weight.dtype == torch.float16 and ctx.dtype == rel.null_embedding.dtype == torch.float32
    # the release under CUDA autocast: the Linear in fp16 (weights cast to fp16), the LayerNorm in float32
    ref = F.layer_norm(F.linear(hidden.half(), lin.weight).float(), (32,), norm.weight.float(), norm.bias.float(),
                       norm.eps)
    torch.testing.assert_close(ctx[0, :5], ref, rtol=0, atol=0)
    assert torch.all(ctx[0, 5] == 0) and mask.tolist() == [[1, 1, 1, 1, 1, 0]]
    info = rel.describe()["weights"]["context"]
    assert info == {"projection_dtype": "text_encoder", "projection_linear": "float16", "projection_norm": "float32",
                    "null_embedding": "float32", "text_encoder_autocast": False}
    # projection_dtype=unet: both in the U-Net's dtype (fp32 here), which rounds differently
    unet = _gen("tiny-kandinsky3-released", embedding_cache="none", text_encoder_dtype="fp16",
                projection_dtype="unet")
    unet.ensure_loaded()
    uctx = unet.context(hidden)[0]
    assert unet.projection.projection_linear.weight.dtype == torch.float32
    assert 0 < (uctx - ctx).abs().max() < 0.05
    assert unet.describe()["weights"]["context"]["projection_linear"] == "float32"
    with pytest.raises(UserError, match="parameter 'projection_dtype'.*'fp16'; use one of text_encoder, unet"):
        _gen("tiny-kandinsky3-released", projection_dtype="fp16")


@pytest.mark.parametrize("name", ["tiny-kandinsky3-released", "tiny-kandinsky3-flash"])
def test_noise_release_draws_as_the_official_loop_after_manual_seed(name):
    g = _gen(name, steps=2, embedding_cache="none", noise="release")
    req = [GenRequest("p1", SHORT, 0, 1234), GenRequest("p2", "a dog", 0, 99)]
    start, step = g.noise(req)
    torch.manual_seed(1234)
    img = torch.randn(1, 4, 8, 8, device="cpu")
    assert torch.equal(start[:1], img) and torch.equal(step(0)[:1], torch.randn_like(img))
    out = g.generate(req)
    # still independent of the batch: noise tied to the batch would change every pixel; batched kernels move a few
    # by float noise, which Flash's x0 prediction at t=979 amplifies up to about one 8-bit level
    alone = g.generate(req[1:])[0].image
    assert np.abs(out[1].image - alone).max() <= 1 / 255 and np.abs(out[1].image - alone).mean() < 1e-4
    cpu = _gen(name, steps=2, embedding_cache="none")
    assert not np.allclose(out[0].image, cpu.generate(req[:1])[0].image, atol=1e-3)
    assert g.describe()["weights"]["noise"] == "release" and g.identity()["params"]["noise"] == "release"
    from k3eval.generate import run_info
    from k3eval.prompts import load_prompt_set as prompts

    assert run_info(g, prompts("parti").select(limit=1), 1, 0)["seed"]["noise"].startswith("noise=release")
    assert run_info(cpu, prompts("parti").select(limit=1), 1, 0)["seed"]["noise"].startswith("initial noise drawn on")
    with pytest.raises(UserError, match="parameter 'noise'.*'gpu'; use one of cpu, release"):
        _gen(name, noise="gpu")


# ---- the decoder: weights/movq.pt as released, or a diffusers VQModel ----------------------------------------------
def test_movq_comes_from_the_official_file_unless_a_diffusers_one_is_given(kandinsky3_released):
    from k3eval.generators.kandinsky3 import tiny_pipeline_folder

    kandinsky3_released.ensure_loaded()
    loaded = kandinsky3_released.describe()["weights"]["loaded"]
    assert loaded["movq"]["format"] == "official .pt" and loaded["movq"]["path"].endswith("weights/movq.pt")
    other = _gen("tiny-kandinsky3-released", steps=2, embedding_cache="none", movq=str(tiny_pipeline_folder()))
    req = [GenRequest("p", SHORT, 0, 9)]
    a, b = kandinsky3_released.generate(req)[0].image, other.generate(req)[0].image
    assert other.describe()["weights"]["loaded"]["movq"]["format"] == "diffusers VQModel"
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)  # another decoder, another image


# ---- revisions: the real entry on a fake hub cache -----------------------------------------------------------------
def test_kandinsky3_records_the_commit_of_every_repository_it_reads(fake_hub, tmp_path):
    from k3eval.generators.kandinsky3 import tiny_pipeline_folder, tiny_released_folder

    weights = tiny_released_folder() / "weights"
    commit = "1" * 40
    fake_hub.add("ai-forever/Kandinsky3.1", {"weights": weights}, commit)
    fake_hub.add("kandinsky-community/kandinsky-3", {"text_encoder": tiny_pipeline_folder() / "text_encoder",
                                                     "tokenizer": tiny_pipeline_folder() / "tokenizer"}, "2" * 40,
                 missing=("tokenizer/config.json",))  # transformers looks for it; the real repository has none
    small = {"height": 64, "width": 64, "steps": 2, "head_dim": 8, "groups": 4, "variant": None,
             "text_encoder_dtype": "fp32", "embedding_cache": "none"}
    g = _gen("kandinsky3", **small)
    generate_run(g, load_prompt_set("parti").select(limit=1), tmp_path / "run", progress=False)
    repos = json.loads((tmp_path / "run" / "run.json").read_text())["generator"]["repositories"]
    by_role = {r["role"]: r for r in repos}
    assert {by_role[k]["commit"] for k in ("unet", "projection", "movq")} == {commit}
    assert by_role["unet"]["source"] == "ai-forever/Kandinsky3.1" and by_role["unet"]["revision"] == "main"
    assert by_role["text_encoder"]["commit"] == by_role["tokenizer"]["commit"] == "2" * 40
    # a pinned revision that is not there: a clear error naming it and the command that fetches it
    with pytest.raises(UserError, match=r"revision 3{40}.*hf download ai-forever/Kandinsky3.1 weights/kandinsky3.pt "
                                        r"--revision 3{40}"):
        _gen("kandinsky3", **small, revision="3" * 40).ensure_loaded()


# ---- what a run records: prompts cut by the text encoder, sizes ---------------------------------------------------
def test_prompts_longer_than_the_encoder_takes_are_counted_and_warned(tmp_path, caplog):
    from k3eval.prompts.core import Prompt, PromptSet

    long = " ".join(["a red cube on a blue sphere beside a green cone"] * 20)
    prompts = PromptSet("t", [Prompt("short", SHORT, "x"), Prompt("long", long, "x")])
    g = _gen("tiny-kandinsky3-flash", embedding_cache="none")
    with caplog.at_level("WARNING", logger="k3eval"):
        generate_run(g, prompts, tmp_path / "run", samples=2, progress=False)
    df = RunFolder(tmp_path / "run").read_manifest()
    assert df.set_index("prompt_id")["prompt_truncated"].groupby(level=0).all().to_dict() == {"long": True,
                                                                                               "short": False}
    assert (df.loc[df.prompt_id == "long", "prompt_tokens"] > 128).all()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["totals"]["truncated_prompts"] == 1
    assert info["generator"]["truncated_prompts"]["count"] == 1
    assert info["generator"]["truncated_prompts"]["token_limit"] == 128
    assert sum("cut to the text encoder's 128" in r.getMessage() for r in caplog.records) == 1  # once per prompt


def test_parameters_are_checked_before_anything_is_loaded():
    from k3eval.generators import validate_params

    with pytest.raises(UserError, match=r"parameter 'height' of 'tiny-kandinsky3-released' must be between 1 and "
                                        r"4096 .*got 100000000"):
        _gen("tiny-kandinsky3-released", height=100_000_000)
    with pytest.raises(UserError, match="parameter 'steps' .* between 1 and 1000"):
        _gen("kandinsky3", steps=5000)
    assert validate_params("kandinsky3", {"height": 100})["height"] == 128
    with pytest.raises(UserError, match="parameter 'negative_mode' of 'kandinsky3': got 'cut'; use one of release, "
                                        "pad"):
        validate_params("kandinsky3", {"negative_mode": "cut"})
    with pytest.raises(UserError, match="generator 'kandinsky3' has no parameter 'negative_mod'"):
        validate_params("kandinsky3", {"negative_mod": "pad"})
