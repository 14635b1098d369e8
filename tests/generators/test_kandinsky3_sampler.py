"""The release and Flash samplers against float64 references computed by hand in numpy (not with the module's own
helpers), on crafted tensors and hand-made U-Net functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from k3eval.generators import kandinsky3_sampler as ks


def _f(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def test_schedule_matches_closed_form():
    alphas = ks.alphas_cumprod()
    assert alphas.dtype == np.float64 and alphas.shape == (1000,)
    # Without clipping the product telescopes: alpha_bar[t] = f((t + 1) / T) / f(0).
    for t in (0, 1, 19, 500, 979, 998):
        assert alphas[t] == pytest.approx(_f((t + 1) / 1000) / _f(0.0), rel=1e-12, abs=1e-15)
    betas = ks.cosine_betas()
    assert betas[999] == 0.999  # f(1) = 0 makes the last beta 1, clipped to 0.999
    assert alphas[999] == pytest.approx(alphas[998] * 0.001, rel=1e-12)
    assert np.all(np.diff(alphas) < 0)


def test_timestep_lists():
    ts50 = ks.released_timesteps(50)
    assert ts50 == [999 - 20 * i for i in range(50)] and ts50[-1] == 19
    assert ks.step_pairs(50)[-1] == (19, 0) and ks.step_pairs(50)[0] == (999, 979)
    ts25 = ks.released_timesteps(25)
    assert ts25 == [999 - 40 * i for i in range(25)] and ts25[-1] == 39
    # 1000 // 7 = 142 leaves room for an 8th timestep, as in the release
    assert ks.released_timesteps(7) == [999, 857, 715, 573, 431, 289, 147, 5]
    assert ks.FLASH_TIMESTEPS == (979, 729, 479, 229)
    with pytest.raises(ValueError):
        ks.released_timesteps(0)


def test_dynamic_threshold_on_crafted_tensors():
    small = torch.linspace(-0.5, 0.5, 100, dtype=torch.float64).reshape(1, 1, 10, 10)
    big = torch.arange(100, dtype=torch.float64).reshape(1, 1, 10, 10) * 0.1 - 2.0  # -2.0 ... 7.9
    x = torch.cat([small, big])
    out = ks.dynamic_threshold(x, 0.99)
    # sample 0: quantile 0.5 < 1 -> s = 1, nothing changes
    assert torch.equal(out[0], small[0])
    # sample 1: numpy's linear quantile of |x|, then clip and divide
    a = np.abs(big.numpy().ravel())
    s = max(np.quantile(a, 0.99), 1.0)
    ref = np.clip(big.numpy(), -s, s) / s
    assert s == pytest.approx(7.801, abs=1e-12)  # rank 0.99 * 99 = 98.01 between 7.8 and 7.9
    np.testing.assert_allclose(out[1].numpy(), ref[0], rtol=0, atol=1e-12)
    assert out[1].abs().max().item() == pytest.approx(1.0)


def _ref_update(x, eps, a_t, a_prev, noise, eta=1.0, q=0.99):
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.maximum(np.quantile(flat, q, axis=1), 1.0).reshape(-1, 1, 1, 1)
    x0 = np.clip(x0, -s, s) / s
    eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    sigma = np.sqrt(eta * (1 - a_t / a_prev) * (1 - a_prev) / (1 - a_t))
    out = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps
    if noise is not None:
        out = out + sigma * noise
    return out


def test_one_update_step_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3, 3)) * 3.0
    eps = rng.normal(size=(2, 4, 3, 3))
    noise = rng.normal(size=(2, 4, 3, 3))
    alphas = ks.alphas_cumprod()
    for t, t_prev, nz in ((999, 979, noise), (519, 499, noise), (19, 0, None)):
        got, _ = ks.released_update(torch.from_numpy(x), torch.from_numpy(eps), alphas[t], alphas[t_prev],
                                    None if nz is None else torch.from_numpy(nz))
        np.testing.assert_allclose(got.numpy(), _ref_update(x, eps, alphas[t], alphas[t_prev], nz), rtol=1e-12,
                                   atol=1e-12)


def test_cut_and_null_context():
    emb = torch.arange(2 * 6 * 3, dtype=torch.float64).reshape(2, 6, 3) + 1.0
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    ctx, m = ks.cut_context(emb, mask)
    assert ctx.shape == (2, 4, 3) and m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert torch.all(ctx[0, 2:] == 0) and torch.all(ctx[1, 3] == 0) and torch.equal(ctx[1, :3], emb[1, :3])
    null = torch.tensor([7.0, 8.0, 9.0], dtype=torch.float64)
    u, um = ks.null_context(ctx, m, null)
    assert u.shape == ctx.shape and um.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert torch.equal(u[:, 0], null.expand(2, 3)) and torch.all(u[:, 1:] == 0)


def test_negative_prompt_is_not_cut_to_the_positive_length():
    pos, pmask = torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])
    neg, nmask = torch.full((1, 6, 2), 2.0), torch.tensor([[1, 1, 1, 1, 1, 0]])
    c, cm, u, um = ks.guidance_contexts(pos, pmask, torch.zeros(2), neg, nmask)
    assert c.shape == u.shape == (1, 6, 2)
    assert torch.equal(u, neg) and um.tolist() == [[1, 1, 1, 1, 1, 0]]  # the whole negative prompt survives
    assert torch.equal(c[:, :3], pos) and torch.all(c[:, 3:] == 0) and cm.tolist() == [[1, 1, 0, 0, 0, 0]]
    # a shorter negative prompt is padded to the positive one
    c2, _, u2, um2 = ks.guidance_contexts(neg, nmask, torch.zeros(2), pos, pmask)
    assert c2.shape == u2.shape == (1, 6, 2) and um2.tolist() == [[1, 1, 0, 0, 0, 0]]


def _toy_unet(x, t, ctx, mask):
    """A U-Net stand-in that depends on the input, the timestep and the (masked) context."""
    c = (ctx * mask.unsqueeze(-1)).sum(dim=(1, 2)).reshape(-1, 1, 1, 1)
    return 0.3 * x + 0.01 * c + 1e-4 * t


def test_guided_sampling_with_null_embedding_float64():
    rng = np.random.default_rng(1)
    x_t = rng.normal(size=(2, 4, 2, 2))
    ctx = torch.from_numpy(rng.normal(size=(2, 3, 5)))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    null = torch.from_numpy(rng.normal(size=5))
    u, um = ks.null_context(ctx, mask, null)
    noises = [rng.normal(size=(2, 4, 2, 2)) for _ in range(3)]
    w = 3.0
    got, evals = ks.sample_released(_toy_unet, torch.from_numpy(x_t), ctx, mask, u, um, steps=3, guidance=w,
                                    step_noise=lambda i: torch.from_numpy(noises[i]))
    assert evals == 6
    # reference: by hand, with the null embedding as the whole unconditional context
    alphas = ks.alphas_cumprod()
    c_sum = (ctx.numpy() * mask.numpy()[..., None]).sum(axis=(1, 2)).reshape(-1, 1, 1, 1)
    u_sum = null.numpy().sum()
    x = x_t
    for i, (t, tp) in enumerate([(999, 666), (666, 333), (333, 0)]):
        eps_c = 0.3 * x + 0.01 * c_sum + 1e-4 * t
        eps_u = 0.3 * x + 0.01 * u_sum + 1e-4 * t
        eps = (w + 1) * eps_c - w * eps_u
        x = _ref_update(x, eps, alphas[t], alphas[tp], noises[i] if tp != 0 else None)
    np.testing.assert_allclose(got.numpy(), x, rtol=1e-10, atol=1e-10)


def test_flash_sampler_float64():
    rng = np.random.default_rng(2)
    start = rng.normal(size=(1, 4, 2, 2))
    ctx, mask = torch.from_numpy(rng.normal(size=(1, 2, 3))), torch.tensor([[1, 0]])
    noises = [rng.normal(size=(1, 4, 2, 2)) for _ in range(4)]
    got, evals = ks.sample_flash(_toy_unet, torch.from_numpy(start), ctx, mask,
                                 step_noise=lambda i: torch.from_numpy(noises[i]))
    assert evals == 4
    alphas = ks.alphas_cumprod()
    c = (ctx.numpy() * mask.numpy()[..., None]).sum()
    x0 = start
    for i, t in enumerate((979, 729, 479, 229)):
        a = alphas[t]
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noises[i]
        eps = 0.3 * xt + 0.01 * c + 1e-4 * t
        x0 = (xt - np.sqrt(1 - a) * eps) / np.sqrt(a)
    np.testing.assert_allclose(got.numpy(), x0, rtol=1e-10, atol=1e-10)


def test_per_image_noise_does_not_depend_on_the_batch():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    alone = ks.per_image_noise(gens([5]), (4, 2, 2))
    batch = ks.per_image_noise(gens([9, 5]), (4, 2, 2))
    for step in range(3):
        assert torch.equal(alone(step)[0], batch(step)[1])


# ---- the release's negative prompt (kandinsky3/condition_processors.py) -------------------------------------------
EOS, PAD = 1, 0


def test_release_negative_ids_on_hand_built_sequences():
    prompt = [11, 12, 13, EOS]  # 3 words + end-of-text: 4 tokens
    # a longer negative prompt is cut to 4 tokens and its last kept token becomes end-of-text
    assert ks.release_negative_ids(prompt, [21, 22, 23, 24, 25, 26, EOS], EOS, PAD) == [21, 22, 23, EOS]
    # one of equal length is unchanged
    assert ks.release_negative_ids(prompt, [21, 22, 23, EOS], EOS, PAD) == [21, 22, 23, EOS]
    # a shorter one keeps its tokens and is padded to the prompt's length (the prompt's mask then covers the pads)
    assert ks.release_negative_ids(prompt, [21, EOS], EOS, PAD) == [21, EOS, PAD, PAD]
    # an empty negative prompt is just end-of-text
    assert ks.release_negative_ids(prompt, [EOS], EOS, PAD) == [EOS, PAD, PAD, PAD]
    # a one-token prompt leaves only end-of-text
    assert ks.release_negative_ids([EOS], [21, 22, EOS], EOS, PAD) == [EOS]
    with pytest.raises(ValueError):
        ks.release_negative_ids([], [21, EOS], EOS, PAD)


def test_release_negative_contexts_share_the_prompt_length_and_mask():
    # after encoding, both contexts have the prompt's length: guidance_contexts pads nothing
    pos, pmask = torch.ones(1, 5, 2), torch.tensor([[1, 1, 1, 1, 0]])
    neg = torch.full((1, 5, 2), 2.0)
    c, cm, u, um = ks.guidance_contexts(pos, pmask, torch.zeros(2), neg, pmask.clone())
    assert torch.equal(c, pos) and torch.equal(u, neg) and torch.equal(cm, um)


# ---- noise=release: the official loops' draws after torch.manual_seed(seed) -----------------------------------------
def _official_draws(seed: int, shape: tuple[int, ...], steps: int) -> list[torch.Tensor]:
    """What the official sampler draws from the global generator: torch.randn(*shape) for the start, then one
    torch.randn_like(img) per step."""
    torch.manual_seed(seed)
    img = torch.randn(*shape, device="cpu")
    return [img] + [torch.randn_like(img) for _ in range(steps)]


def test_release_noise_makes_the_official_calls_in_order():
    shape = (4, 3, 5)
    start, step = ks.release_noise([123, 77], shape, "cpu")
    draws = [step(i) for i in range(3)]
    for b, seed in enumerate((123, 77)):  # each image as an official call with images_num=1 at its seed
        ref = _official_draws(seed, (1, *shape), 3)
        assert torch.equal(start[b:b + 1], ref[0])
        for i in range(3):
            assert torch.equal(draws[i][b:b + 1], ref[i + 1])
    assert start.dtype == torch.float32
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    ks.release_noise([5], shape, "cpu")
    assert torch.equal(torch.rand(1), before)  # the global generator is left alone


def test_sampler_with_release_noise_matches_a_loop_on_the_global_generator():
    rng = np.random.default_rng(3)
    ctx = torch.from_numpy(rng.normal(size=(1, 3, 5)))
    mask = torch.tensor([[1, 1, 0]])
    null = torch.from_numpy(rng.normal(size=5))
    u, um = ks.null_context(ctx, mask, null)
    shape = (4, 2, 2)
    start, step = ks.release_noise([42], shape, "cpu")
    got, _ = ks.sample_released(_toy_unet, start.double(), ctx, mask, u, um, steps=3, guidance=3.0, step_noise=step)
    # the official order by hand: start latents, then after each U-Net call one draw (the last one unused)
    alphas = ks.alphas_cumprod()
    torch.manual_seed(42)
    x = torch.randn(1, *shape).double()
    for t, tp in [(999, 666), (666, 333), (333, 0)]:
        eps = ks.guide(_toy_unet(x, t, ctx, mask), _toy_unet(x, t, u, um), 3.0)
        noise = torch.randn_like(x.float()).double()
        x, _ = ks.released_update(x, eps, alphas[t], alphas[tp], noise if tp != 0 else None)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    # Flash: one draw before each of its four U-Net calls
    start, step = ks.release_noise([42], shape, "cpu")
    flash, _ = ks.sample_flash(_toy_unet, start.double(), ctx, mask, step_noise=step)
    torch.manual_seed(42)
    x0 = torch.randn(1, *shape).double()
    for t in ks.FLASH_TIMESTEPS:
        a = float(alphas[t])
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn_like(x0.float()).double()
        x0 = ks.predict_x0(xt, _toy_unet(xt, t, ctx, mask), a)
    torch.testing.assert_close(flash, x0, rtol=1e-12, atol=1e-12)
