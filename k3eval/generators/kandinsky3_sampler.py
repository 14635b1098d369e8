"""The Kandinsky 3.0 release sampler and the Kandinsky 3.1 Flash sampler as pure functions.

Facts from the Kandinsky 3.0 technical report and the official code (ai-forever/Kandinsky-3, commit a4c9e92), not
copied code. The networks are not here: the loops take `unet_fn(x, t, context, mask) -> eps`, so the generators run
them on diffusers' `Kandinsky3UNet` and the tests on hand-made functions with float64 references.

Conventions: `alphas` is the cumulative product alpha-bar over the 1000 training steps, indexed by timestep
(float64 numpy). Latents stay float32 (or float64 in tests) whatever dtype the U-Net runs in: the update below is
the part that drifts most in low precision, and it costs nothing next to a U-Net pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

TRAIN_STEPS = 1000
#: The four timesteps of the Flash sampler (Kandinsky 3.1).
FLASH_TIMESTEPS: tuple[int, ...] = (979, 729, 479, 229)
#: Default per-sample quantile of |x0| used by dynamic thresholding (0.95 in the inpainting model).
THRESHOLD_QUANTILE = 0.99

UNetFn = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]


# ---- schedule ---------------------------------------------------------------------------------------------------
def cosine_alpha_bar(s: float) -> float:
    """alpha-bar of the cosine schedule at s = t / T in [0, 1]: cos(((s + 0.008) / 1.008) * pi / 2) ** 2."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in [0, T), float64."""
    return np.array([min(1.0 - cosine_alpha_bar((i + 1) / train_steps) / cosine_alpha_bar(i / train_steps), 0.999)
                     for i in range(train_steps)], dtype=np.float64)


def alphas_cumprod(train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """Cumulative product of (1 - beta_i), float64; entry t is alpha-bar at timestep t."""
    return np.cumprod(1.0 - cosine_betas(train_steps))


def released_timesteps(steps: int, train_steps: int = TRAIN_STEPS) -> list[int]:
    """The timesteps the release visits: 999, 999 - k, ... while > 0, with k = 1000 // steps.

    For 50 steps: 999, 979, ..., 19 (50 values). When 1000 is not a multiple of `steps` the list can hold one more
    value than `steps` (7 steps visit 8 timesteps), as the release does.
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be in [1, {train_steps}], got {steps}")
    return list(range(train_steps - 1, 0, -(train_steps // steps)))


def step_pairs(steps: int, train_steps: int = TRAIN_STEPS) -> list[tuple[int, int]]:
    """(t, t_prev) for each update; the last t_prev is 0, whose alpha-bar is that of timestep 0 (1 - beta_0, about
    0.99996, as the release indexes it), and that update adds no noise."""
    ts = released_timesteps(steps, train_steps)
    return list(zip(ts, [*ts[1:], 0]))


# ---- one update ---------------------------------------------------------------------------------------------------
def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """The release's guidance form (w + 1) * eps_cond - w * eps_uncond (w = 3.0 is a standard CFG scale of 4)."""
    return (weight + 1.0) * eps_cond - weight * eps_uncond


def dynamic_threshold(x0: torch.Tensor, quantile: float = THRESHOLD_QUANTILE) -> torch.Tensor:
    """s = per-sample `quantile` of |x0| (linear interpolation, as torch.quantile), clamped to >= 1; x0 is clipped
    to [-s, s] and divided by s."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)


def released_update(x_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float, noise: torch.Tensor | None,
                    eta: float = 1.0, quantile: float | None = THRESHOLD_QUANTILE
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the release: predict x0, threshold it, recompute eps from it, then the DDIM-style move with
    sigma = sqrt(eta * (1 - a_t / a_prev) * (1 - a_prev) / (1 - a_t)). `noise` is None on the last step (t_prev = 0).
    `quantile=None` clips x0 to [-1, 1] instead. Returns (x_prev, thresholded x0)."""
    x0 = predict_x0(x_t, eps, a_t)
    x0 = dynamic_threshold(x0, quantile) if quantile is not None else x0.clamp(-1.0, 1.0)
    eps = eps_from_x0(x_t, x0, a_t)
    sigma2 = eta * (1.0 - a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
    # 1 - a_prev - sigma^2 >= 0 in exact arithmetic (a_prev <= 1); the max guards against rounding.
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma2, 0.0)) * eps
    if noise is not None:
        x_prev = x_prev + math.sqrt(sigma2) * noise
    return x_prev, x0


# ---- contexts -----------------------------------------------------------------------------------------------------
def cut_context(embeddings: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the embeddings at padded positions and cut the context to the longest mask length + 1 (at most its
    length), as the release does after the text projection."""
    embeddings = embeddings * mask.unsqueeze(-1).to(embeddings.dtype)
    keep = min(int(mask.sum(-1).max()) + 1, embeddings.shape[1])
    return embeddings[:, :keep], mask[:, :keep]


def pad_context(embeddings: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, L, D) / (B, L) with zero embeddings and mask 0 up to `length` (never cuts)."""
    extra = length - embeddings.shape[1]
    if extra <= 0:
        return embeddings, mask
    b, _, d = embeddings.shape
    emb = torch.cat([embeddings, embeddings.new_zeros(b, extra, d)], dim=1)
    return emb, torch.cat([mask, mask.new_zeros(b, extra)], dim=1)


def null_context(context: torch.Tensor, mask: torch.Tensor, null_embedding: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's unconditional context: zeros shaped like `context`, mask zeros, except position 0, which holds
    the learned null embedding with mask 1."""
    uncond = torch.zeros_like(context)
    uncond[:, 0] = null_embedding.reshape(-1).to(uncond)
    umask = torch.zeros_like(mask)
    umask[:, 0] = 1
    return uncond, umask


def release_negative_ids(prompt_ids: Sequence[int], negative_ids: Sequence[int], eos_id: int, pad_id: int
                         ) -> list[int]:
    """The token ids the release encodes for a negative prompt (`kandinsky3/condition_processors.py`): the negative
    prompt's ids cut to the prompt's token count, the last kept one replaced by end-of-text; it is then encoded with
    the prompt's attention mask, so a shorter negative prompt is padded to the prompt's length with pad tokens that
    the mask lets the encoder see. Both id lists are as the tokenizer gives them (ending with end-of-text)."""
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("the prompt has no tokens")
    ids = list(negative_ids[:n]) or [eos_id]
    ids[-1] = eos_id
    return ids + [pad_id] * (n - len(ids))


def guidance_contexts(context: torch.Tensor, mask: torch.Tensor, null_embedding: torch.Tensor,
                      negative: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, cond_mask, uncond, uncond_mask) of equal length. A negative context replaces the null context; the
    shorter of the two is padded to the longer (with the release's negative ids both already have the prompt's
    length; with `negative_mode=pad` a long negative prompt keeps all its tokens)."""
    if negative is None:
        return (context, mask, *null_context(context, mask, null_embedding))
    if negative_mask is None:
        raise ValueError("negative_mask is required with a negative context")
    length = max(context.shape[1], negative.shape[1])
    return (*pad_context(context, mask, length), *pad_context(negative, negative_mask, length))


# ---- loops --------------------------------------------------------------------------------------------------------
def sample_released(unet_fn: UNetFn, noise: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                    uncond: torch.Tensor | None, uncond_mask: torch.Tensor | None, *, steps: int = 50,
                    guidance: float = 3.0, eta: float = 1.0, quantile: float | None = THRESHOLD_QUANTILE,
                    step_noise: NoiseFn | None = None, alphas: np.ndarray | None = None) -> tuple[torch.Tensor, int]:
    """The Kandinsky 3.0 sampler from x_T = `noise` to x_0; returns (x_0, U-Net evaluations per image).

    Each step evaluates the conditional and unconditional contexts in one batch of 2B (skipped when guidance is 0,
    where the result is the conditional prediction alone). `step_noise(i)` gives the noise of update i (shaped like
    `noise`); without it the updates add no noise.
    """
    alphas = alphas_cumprod() if alphas is None else alphas
    guided = guidance != 0.0
    if guided and (uncond is None or uncond_mask is None):
        raise ValueError("guidance needs an unconditional context")
    x = noise
    evals = 0
    for i, (t, t_prev) in enumerate(step_pairs(steps, len(alphas))):
        if guided:
            eps_both = unet_fn(torch.cat([x, x]), t, torch.cat([context, uncond]), torch.cat([mask, uncond_mask]))
            eps_cond, eps_uncond = eps_both.chunk(2)
            eps = guide(eps_cond, eps_uncond, guidance)
            evals += 2
        else:
            eps = unet_fn(x, t, context, mask)
            evals += 1
        noise_i = step_noise(i).to(x) if (step_noise is not None and t_prev != 0) else None
        x, _ = released_update(x, eps.to(x.dtype), float(alphas[t]), float(alphas[t_prev]), noise_i, eta, quantile)
    return x, evals


def sample_flash(unet_fn: UNetFn, noise: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, *,
                 timesteps: Sequence[int] = FLASH_TIMESTEPS, step_noise: NoiseFn,
                 alphas: np.ndarray | None = None) -> tuple[torch.Tensor, int]:
    """The Kandinsky 3.1 Flash sampler: `noise` is the first x0 estimate; at each t the current x0 is re-noised
    with fresh noise `step_noise(i)`, the U-Net predicts eps and x0 is recomputed. Returns (last x0, evaluations)."""
    alphas = alphas_cumprod() if alphas is None else alphas
    x0 = noise
    for i, t in enumerate(timesteps):
        a_t = float(alphas[t])
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1.0 - a_t) * step_noise(i).to(x0)
        eps = unet_fn(x_t, t, context, mask).to(x0.dtype)
        x0 = predict_x0(x_t, eps, a_t)
    return x0, len(timesteps)


def release_noise(seeds: Sequence[int], shape: Sequence[int], device: str | torch.device
                  ) -> tuple[torch.Tensor, NoiseFn]:
    """Noise drawn as the official loops draw it after `torch.manual_seed(seed)` on `device`, one image per seed.

    The official sampler draws the start latents with `torch.randn((1, *shape), device=device)`, then, at each step,
    `torch.randn_like` of the float32 latents (after the U-Net in the 3.0 loop, before it in the Flash loop: one draw
    per step either way, from the same generator). Each image gets its own generator of `device` seeded with its seed,
    so an image matches an official call with `images_num=1` on the same kind of GPU (the draws of a CUDA generator
    differ from the CPU's). Returns (start latents (B, *shape), step noise fn)."""
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def draw() -> torch.Tensor:
        return torch.cat([torch.randn((1, *shape), generator=g, device=device, dtype=torch.float32)
                          for g in generators])

    start = draw()
    return start, lambda _step: draw()


def per_image_noise(generators: Sequence[torch.Generator], shape: Sequence[int],
                    dtype: torch.dtype = torch.float32) -> NoiseFn:
    """step_noise for a batch: image i draws from its own CPU generator, so its noise does not depend on its batch."""
    def draw(_step: int) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]).to(dtype)

    return draw
