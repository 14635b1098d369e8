"""Any diffusers text-to-image pipeline as a k3eval generator (baselines, `diffusers:ORG/NAME`, tiny pipelines).

Initial latents are drawn per image on the CPU from the image's seed and passed to the pipeline as `latents`, so an
image does not depend on the batch it was made in, the device, or the number of processes.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from k3eval.errors import UserError
from k3eval.generators.base import Generator, GenOutput, GenRequest, torch_dtype
from k3eval.generators.hub import DEFAULT_REVISION
from k3eval.seeds import cpu_noise


def weights_not_found(model: str, err: Exception, revision: str | None = None, param: str = "model") -> UserError:
    from k3eval.generators.hub import download_hint

    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UserError(f"cannot load weights '{model}' (revision {revision or 'main'}): {first}. Offline, download them "
                     f"on a machine with access ({download_hint(model, revision=revision)}) into the Hugging Face "
                     f"cache, or pass a local folder with --set {param}=/path/to/folder")


def dtype_kwarg() -> str:
    """Recent diffusers name the load dtype `dtype` and warn on `torch_dtype`; older releases know only
    `torch_dtype` and would silently ignore `dtype`. The deprecation message marks which one this is."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


#: transformers renamed `from_pretrained(torch_dtype=)` to `dtype=` in 4.56 (PR 39782); 4.44-4.55, which pyproject
#: allows, do not know `dtype` and fail on it, while 5.x warns on `torch_dtype`.
TRANSFORMERS_DTYPE_SINCE = (4, 56)


def transformers_dtype_kwarg(version: str | None = None) -> str:
    """The name transformers `version` (default: the installed one) gives the load dtype of `from_pretrained`."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    return "dtype" if Version(version).release[:2] >= TRANSFORMERS_DTYPE_SINCE else "torch_dtype"


def quiet_hub_logging() -> None:
    """Loading bars and info lines of diffusers/transformers would drown k3eval's own progress bar."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def peak_memory_mb(device: str) -> float | None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def reset_peak_memory(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def step_generators(requests: Sequence[GenRequest]):
    """One CPU generator per image for the noise a stochastic scheduler (DDPM) adds at each step.

    Seeded from the image seed with a fixed offset so that its stream differs from the initial-noise stream and an
    image does not depend on the other images of its batch (a shared global RNG would make it depend on them).
    """
    import torch

    return [torch.Generator(device="cpu").manual_seed((r.seed + STEP_NOISE_OFFSET) % 2**63) for r in requests]


STEP_NOISE_OFFSET = 0x5EED


class DiffusersPipelineGenerator(Generator):
    """A diffusers pipeline loaded with `from_pretrained` and called with per-image CPU-seeded latents."""

    defaults: ClassVar[dict[str, Any]] = {"model": None, "revision": DEFAULT_REVISION, "pipeline_class": None,
                                          "height": 512, "width": 512, "steps": 50, "guidance": 7.5,
                                          "negative_prompt": None, "scheduler": None, "variant": None}
    extra_keys: ClassVar[tuple[str, ...]] = ()
    # Latent-diffusion pipelines check `height % 8` (their VAE downsamples x8) and raise: refuse the same up front.
    size_multiple: ClassVar[int] = 8
    size_reason: ClassVar[str] = " (the VAE downsamples x8)"

    pipe: Any = None

    # ---- loading ------------------------------------------------------------------------------------------------
    def model_path(self) -> str:
        model = self.params.get("model")
        if not model:
            raise UserError(f"generator '{self.name}' needs a model: --set model=ORG/NAME or a local folder")
        return str(model)

    def pipeline_cls(self):
        import diffusers

        name = self.params.get("pipeline_class")
        if not name:
            return diffusers.DiffusionPipeline
        cls = getattr(diffusers, str(name), None)
        if cls is None:
            raise UserError(f"generator '{self.name}': diffusers has no pipeline class '{name}'")
        return cls

    def check_params(self) -> None:
        """Refuse a pipeline or scheduler class name diffusers does not have (without loading any weights)."""
        self.pipeline_cls()
        if self.params.get("scheduler"):
            self._scheduler_cls(str(self.params["scheduler"]))

    def load(self) -> None:
        quiet_hub_logging()
        model = self.model_path()
        revision = self.params.get("revision")
        kwargs: dict[str, Any] = {dtype_kwarg(): torch_dtype(self.dtype), "revision": revision}
        if self.params.get("variant"):
            kwargs["variant"] = self.params["variant"]
        kwargs.update(self.load_kwargs())
        try:
            pipe = self.pipeline_cls().from_pretrained(model, **kwargs)
        except (OSError, ValueError) as e:
            raise weights_not_found(model, e, revision) from None
        self.record_source("pipeline", model, revision, "model_index.json")
        if self.params.get("scheduler"):
            pipe.scheduler = self._scheduler_cls(str(self.params["scheduler"])).from_config(pipe.scheduler.config)
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def load_kwargs(self) -> dict[str, Any]:
        """Extra `from_pretrained` arguments of a family (a replacement VAE, no safety checker...)."""
        return {}

    def _scheduler_cls(self, name: str):
        diffusers = importlib.import_module("diffusers")
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise UserError(f"generator '{self.name}': diffusers has no scheduler '{name}'")
        return cls

    # ---- generation ---------------------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        """(C, h, w) of one image's initial latents, as the pipeline's `prepare_latents` expects them."""
        pipe = self.pipe
        net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        channels = net.config.in_channels
        factor = getattr(pipe, "vae_scale_factor", 8)
        return (channels, int(self.params["height"]) // factor, int(self.params["width"]) // factor)

    def call_kwargs(self, requests: Sequence[GenRequest]) -> dict[str, Any]:
        p = self.params
        neg = [r.negative_prompt or p.get("negative_prompt") for r in requests]
        kwargs: dict[str, Any] = {"prompt": [r.prompt for r in requests], "num_inference_steps": int(p["steps"]),
                                  "guidance_scale": float(p["guidance"]), "height": int(p["height"]),
                                  "width": int(p["width"]), "output_type": "np"}
        if any(neg):
            kwargs["negative_prompt"] = [n or "" for n in neg]
        return kwargs

    def initial_latents(self, requests: Sequence[GenRequest]):
        import torch

        shape = self.latent_shape()
        latents = torch.stack([cpu_noise(r.seed, shape) for r in requests])
        net_dtype = torch_dtype(self.dtype)
        return latents.to(device=self.device, dtype=net_dtype)

    def text_limits(self) -> list[tuple[Any, int]]:
        """(tokenizer, most tokens the text encoder takes) for each text encoder the prompt goes through."""
        out = []
        for name in ("tokenizer", "tokenizer_2"):
            tok = getattr(self.pipe, name, None)
            if tok is not None and tok.model_max_length < 100_000:  # T5 tokenizers without a set length say 1e30
                out.append((tok, int(tok.model_max_length)))
        return out

    def prompt_extras(self, requests: Sequence[GenRequest]) -> list[dict[str, Any]]:
        """Per request: its token count and whether a text encoder cuts it (see `Generator.token_extras`)."""
        limits = self.text_limits()
        out = []
        for r in requests:
            counts = [(len(tok(r.prompt, truncation=False, verbose=False).input_ids), limit) for tok, limit in limits]
            if not counts:
                out.append({})
                continue
            n, limit = max(counts, key=lambda c: c[0] - c[1])
            out.append(self.token_extras(r.prompt, n, limit))
        return out

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        import torch

        self.ensure_loaded()
        reset_peak_memory(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = self.run_pipeline(requests)
        seconds = (time.perf_counter() - t0) / len(requests)
        peak = peak_memory_mb(self.device)
        self.note_output_size(*images.shape[1:3])
        extras = self.prompt_extras(requests)
        return [GenOutput(images[i], {"seconds": seconds, "peak_memory_mb": peak, **extras[i]})
                for i in range(len(requests))]

    def run_pipeline(self, requests: Sequence[GenRequest]) -> np.ndarray:
        """Call the pipeline once for the batch; returns float32 images (B, H, W, 3) in [0, 1]. Families with more
        than one pipeline (a prior, a refiner) override this hook."""
        out = self.pipe(**self.call_kwargs(requests), latents=self.initial_latents(requests),
                        generator=step_generators(requests))
        return np.asarray(out.images, dtype=np.float32)

    def weights_info(self) -> dict[str, Any]:
        return {"model": self.params.get("model"), "revision": self.params.get("revision")}

    def close(self) -> None:
        self.pipe = None
        self._loaded = False
