"""Kandinsky 3.0 as released, Kandinsky 3.1 Flash, and Kandinsky 3.0 as diffusers runs it.

- `kandinsky3`: the official sampler (`kandinsky3_sampler.sample_released`) on the official U-Net weights
  (`ai-forever/Kandinsky3.1`, `weights/kandinsky3.pt` + `projection.pt`), converted in memory to diffusers'
  `Kandinsky3UNet`; the T5 encoder and MoVQ come from the diffusers-format repo `kandinsky-community/kandinsky-3`.
- `kandinsky3-flash`: the 4-step Flash sampler on `kandinsky3_flash.pt` + `projection_flash.pt`; same encoder, MoVQ.
- `kandinsky3-diffusers`: diffusers' `Kandinsky3Pipeline` unchanged (DDPM, static clipping, zero null context).
- `tiny-kandinsky3-released` / `tiny-kandinsky3-flash`: the first two on tiny random components whose U-Net
  checkpoints are written in the official key layout and .pt format, so tests run the real conversion path.

Why the text projection runs outside the U-Net here: the release projects the T5 output, zeroes padded positions
and cuts the context, and puts the learned null embedding (already in projected space) into the unconditional
context. diffusers' U-Net would project every context it gets, the null embedding included, so the generator takes
`encoder_hid_proj` out of the loaded U-Net and applies it itself.

Why contexts are grouped by length: the U-Net's attention pooling averages the whole context, padded zeros
included, so the length a context is cut to changes the image. The release cuts a batch to its longest prompt; here
each image gets the length it would have alone (the release at batch size 1), and images of equal length share a
U-Net batch, so an image never depends on the other prompts of its batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from k3eval.errors import UserError
from k3eval.generators.base import Generator, GenOutput, GenRequest, check_dtype, torch_dtype
from k3eval.generators.diffusers_pipeline import (
    DiffusersPipelineGenerator,
    peak_memory_mb,
    quiet_hub_logging,
    reset_peak_memory,
    step_generators,
)
from k3eval.seeds import cpu_noise

log = logging.getLogger("k3eval")

OFFICIAL_REPO = "ai-forever/Kandinsky3.1"
DIFFUSERS_REPO = "kandinsky-community/kandinsky-3"
OFFLOAD_MODES = ("none", "model", "sequential")
TEXT_MAX_LENGTH = 128
#: Width and height must be multiples of this: MoVQ downsamples x8 and the U-Net three more times x2.
SIZE_MULTIPLE = 64
_MEMORY_CACHE_SIZE = 512


def round_size(name: str, generator: str, params: dict[str, Any], warnings: list[str]) -> None:
    """Round params['height'/'width'] up to a multiple of 64, recording a warning that says what it became."""
    value = params.get(name)
    if isinstance(value, int) and value % SIZE_MULTIPLE:
        rounded = -(-value // SIZE_MULTIPLE) * SIZE_MULTIPLE
        msg = f"{generator}: {name} {value} is not a multiple of {SIZE_MULTIPLE}; rounded up to {rounded}"
        warnings.append(msg)
        log.warning(msg)
        params[name] = rounded


def hub_file(repo: str, filename: str, param: str) -> Path:
    """A file of a hub repo from the local Hugging Face cache (or the hub when online), with a clear error."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # noqa: BLE001 - hub errors vary by version (offline, missing, gated); all mean "not here"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot find '{filename}' of the hub repo '{repo}' ({first}). Offline, download it on a "
                        f"machine with access (`huggingface-cli download {repo} {filename}`) into the Hugging Face "
                        f"cache, or pass a local file with --set {param}=/path/to/{Path(filename).name}") from None


def _subfolder(source: str, name: str) -> str:
    """A pipeline folder (hub id or local) holds components in subfolders; a local component folder holds it alone."""
    p = Path(source)
    if p.is_dir() and not (p / name).is_dir():
        return ""
    return name


class PromptEmbeddingCache:
    """T5 outputs per prompt (before the projection, so 3.0 and Flash share them), kept in memory for the run and
    on disk under `root/<encoder key>/`, one safetensors file per prompt named by the sha256 of the prompt."""

    def __init__(self, root: Path | None, encoder_key: str):
        self.root = root / encoder_key[:20] if root is not None else None
        self.memory: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _path(self, prompt: str) -> Path | None:
        if self.root is None:
            return None
        h = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return self.root / h[:2] / f"{h}.safetensors"

    def get(self, prompt: str):
        if prompt in self.memory:
            self.memory.move_to_end(prompt)
            self.hits += 1
            return self.memory[prompt]
        path = self._path(prompt)
        if path is not None and path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                # the stored prompt guards against a (practically impossible) hash collision
                if (f.metadata() or {}).get("prompt") == prompt:
                    hidden = f.get_tensor("hidden")
                    self._remember(prompt, hidden)
                    self.hits += 1
                    return hidden
        self.misses += 1
        return None

    def put(self, prompt: str, hidden) -> None:
        self._remember(prompt, hidden)
        path = self._path(prompt)
        if path is not None:
            from safetensors.torch import save

            from k3eval.utils import atomic_write_bytes

            atomic_write_bytes(path, save({"hidden": hidden.contiguous()}, metadata={"prompt": prompt}))

    def _remember(self, prompt: str, hidden) -> None:
        self.memory[prompt] = hidden
        self.memory.move_to_end(prompt)
        while len(self.memory) > _MEMORY_CACHE_SIZE:
            self.memory.popitem(last=False)


class Kandinsky3ReleasedGenerator(Generator):
    """Kandinsky 3.0 exactly as released: official sampler and weights on diffusers/transformers networks."""

    defaults: ClassVar[dict[str, Any]] = {
        "height": 1024, "width": 1024, "steps": 50, "guidance": 3.0, "eta": 1.0, "threshold_quantile": 0.99,
        "negative_prompt": None,
        "unet": None, "projection": None, "weights_repo": OFFICIAL_REPO,
        "text_encoder": None, "movq": None, "variant": "fp16",
        "unet_dtype": None, "text_encoder_dtype": None, "movq_dtype": None,
        "offload": "none", "embedding_cache": "auto", "head_dim": 64, "groups": 32,
    }
    #: the hub files of the official weights repo
    unet_file: ClassVar[str] = "weights/kandinsky3.pt"
    projection_file: ClassVar[str] = "weights/flan_ul2_encoder/projection.pt"
    #: the release's dtypes (README of ai-forever/Kandinsky-3): fp32 U-Net and MoVQ, fp16 text encoder
    component_dtypes: ClassVar[dict[str, str]] = {"unet": "fp32", "text_encoder": "fp16", "movq": "fp32"}
    sampler: ClassVar[str] = "released"

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        p = self.params
        for key in ("unet_dtype", "text_encoder_dtype", "movq_dtype"):
            try:
                check_dtype(p[key])
            except UserError:
                raise UserError(f"parameter '{key}' of '{name}': unknown dtype {p[key]!r}; use fp32, fp16 or bf16") \
                    from None
        if p["offload"] not in OFFLOAD_MODES:
            raise UserError(f"parameter 'offload' of '{name}': got {p['offload']!r}; use one of "
                            f"{', '.join(OFFLOAD_MODES)}")
        if not 0.0 < float(p["threshold_quantile"]) <= 1.0:
            raise UserError(f"parameter 'threshold_quantile' of '{name}' must be in (0, 1], "
                            f"got {p['threshold_quantile']}")
        if float(p.get("eta") or 0.0) < 0:
            raise UserError(f"parameter 'eta' of '{name}' must be >= 0, got {p['eta']}")
        round_size("height", name, p, self.warnings)
        round_size("width", name, p, self.warnings)
        self.check_sampler_params()
        self.unet = self.projection = self.null_embedding = self.movq = None
        self.tokenizer = self.text_encoder = None
        self.cache: PromptEmbeddingCache | None = None
        self._hooks: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def check_sampler_params(self) -> None:
        steps = int(self.params["steps"])
        if steps > 1000:
            raise UserError(f"parameter 'steps' of '{self.name}' must be at most 1000, got {steps}")
        if self.params["guidance"] is None:
            raise UserError(f"parameter 'guidance' of '{self.name}' must be a number (the release uses 3.0)")

    # ---- where things come from -----------------------------------------------------------------------------------
    def component_dtype(self, component: str):
        """The dtype of a component: its own parameter, else --dtype, else the release's choice."""
        name = self.params.get(f"{component}_dtype") or self.dtype or self.component_dtypes[component]
        return torch_dtype(name)

    def weights_file(self, param: str, filename: str) -> Path:
        """A local path given as parameter `param`, else `filename` of the official weights repo."""
        given = self.params.get(param)
        if given:
            p = Path(str(given)).expanduser()
            if not p.exists():
                raise UserError(f"parameter '{param}' of '{self.name}': {p} does not exist")
            return p
        return hub_file(str(self.params["weights_repo"]), filename, param)

    def diffusers_source(self, param: str) -> str:
        """Hub id or local folder of the text encoder / MoVQ (a diffusers-format Kandinsky 3 repo by default)."""
        return str(self.params.get(param) or DIFFUSERS_REPO)

    # ---- loading ----------------------------------------------------------------------------------------------------
    def load(self) -> None:
        quiet_hub_logging()
        self._load_unet()
        self._load_movq()
        self._load_tokenizer()
        self.cache = PromptEmbeddingCache(self._cache_root(), self._encoder_key())
        self._place(["unet", "movq"])

    def _load_unet(self) -> None:
        from k3eval.generators import kandinsky3_convert as conv

        dtype = self.component_dtype("unet")
        path = self.weights_file("unet", self.unet_file)
        if path.is_dir():
            unet, null = conv.load_converted(path, dtype)
            self._sources["unet"] = {"path": str(path), "format": "diffusers (converted)",
                                     "conversion": conv.conversion_info(path)}
        else:
            unet_sd, null = conv.load_official_unet(path)
            proj_path = self.weights_file("projection", self.projection_file)
            proj_sd = conv.load_projection(proj_path)
            config = conv.infer_config(unet_sd, proj_sd, head_dim=int(self.params["head_dim"]),
                                       groups=int(self.params["groups"]))
            unet = conv.build_unet(unet_sd, proj_sd, config, source=f"U-Net checkpoint {path}", dtype=dtype)
            self._sources["unet"] = {"path": str(path), "bytes": path.stat().st_size, "format": "official .pt"}
            self._sources["projection"] = {"path": str(proj_path), "bytes": proj_path.stat().st_size}
        if null.numel() != unet.config.cross_attention_dim:
            raise UserError(f"U-Net checkpoint {path}: null_embedding has {null.numel()} values, expected "
                            f"{unet.config.cross_attention_dim} (the context size)")
        self._adopt_unet(unet, null)

    def _adopt_unet(self, unet, null_embedding) -> None:
        import torch

        dtype = self.component_dtype("unet")
        # the projection runs outside the U-Net (see the module docstring)
        self.projection = unet.encoder_hid_proj.to(device=self.device, dtype=dtype).eval()
        unet.encoder_hid_proj = torch.nn.Identity()
        self.unet = unet.eval()
        self.null_embedding = null_embedding.reshape(-1).to(device=self.device, dtype=dtype)

    def use_components(self, unet, null_embedding, movq, tokenizer, text_encoder=None,
                       cache: PromptEmbeddingCache | None = None) -> None:
        """Run on components built elsewhere (the speed benchmark's seeded random full-size networks) instead of
        loading weights: `unet` is a diffusers Kandinsky3UNet with its projection inside, as converted. Modules are
        cast in place to this generator's component dtypes, and the U-Net loses its projection to the generator."""
        def cast(module, component: str):
            dtype = self.component_dtype(component)
            return module if module.dtype == dtype else module.to(dtype)

        self._adopt_unet(cast(unet, "unet"), null_embedding)
        self.movq, self.tokenizer = cast(movq, "movq").eval(), tokenizer
        self.text_encoder = cast(text_encoder, "text_encoder").eval() if text_encoder is not None else None
        self.cache = cache or PromptEmbeddingCache(None, "in-memory")
        self._place(["unet", "movq"] + (["text_encoder"] if text_encoder is not None else []))
        self._sources["unet"] = {"format": "components given in memory"}
        self._loaded = True

    def _load_movq(self) -> None:
        from diffusers import VQModel

        from k3eval.generators.diffusers_pipeline import dtype_kwarg

        src = self.diffusers_source("movq")
        try:
            self.movq = VQModel.from_pretrained(src, subfolder=_subfolder(src, "movq") or None,
                                                **{dtype_kwarg(): self.component_dtype("movq")}).eval()
        except (OSError, ValueError) as e:
            raise self._missing(src, "movq", "movq", e) from None
        self._sources["movq"] = src

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        src = self.diffusers_source("text_encoder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src, subfolder=_subfolder(src, "tokenizer"))
        except (OSError, ValueError) as e:
            raise self._missing(src, "tokenizer", "text_encoder", e) from None
        self._sources["text_encoder"] = src

    def _load_text_encoder(self) -> None:
        """Loaded on the first prompt missing from the embedding cache: a fully cached run never loads the 8.6B
        encoder."""
        from transformers import T5EncoderModel

        src = self.diffusers_source("text_encoder")
        kwargs: dict[str, Any] = {"dtype": self.component_dtype("text_encoder")}
        if self.params.get("variant"):
            kwargs["variant"] = self.params["variant"]
        try:
            self.text_encoder = T5EncoderModel.from_pretrained(src, subfolder=_subfolder(src, "text_encoder"),
                                                               **kwargs).eval()
        except (OSError, ValueError) as e:
            raise self._missing(src, "text_encoder", "text_encoder", e) from None
        self._place(["text_encoder"])

    def _missing(self, src: str, subfolder: str, param: str, err: Exception) -> UserError:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        variant = f" --include '{subfolder}/*'" if subfolder else ""
        return UserError(f"{self.name}: cannot load the {subfolder} from '{src}' ({first}). Offline, download it on a "
                         f"machine with access (`huggingface-cli download {DIFFUSERS_REPO}{variant}`) into the "
                         f"Hugging Face cache, or pass a local folder with --set {param}=/path/to/folder")

    def _place(self, names: Sequence[str]) -> None:
        """Move components to the device, or attach accelerate's offload hooks (model: whole component moved in for
        its stage; sequential: layer by layer)."""
        mode = self.params["offload"]
        for name in names:
            module = getattr(self, name)
            if mode == "none":
                module.to(self.device)
            elif mode == "model":
                from accelerate import cpu_offload_with_hook

                _, self._hooks[name] = cpu_offload_with_hook(module, execution_device=self.device)
            else:
                from accelerate import cpu_offload

                cpu_offload(module, execution_device=self.device)

    def _offload(self, name: str) -> None:
        hook = self._hooks.get(name)
        if hook is not None:
            hook.offload()

    def _cache_root(self) -> Path | None:
        setting = str(self.params.get("embedding_cache") or "none")
        if setting == "none":
            return None
        if setting == "auto":
            from k3eval.utils import cache_dir

            return cache_dir() / "kandinsky3" / "text-embeddings"
        return Path(setting).expanduser()

    def _encoder_key(self) -> str:
        """Identity of the text-encoder output: source, its config, tokenizer, dtype and token limit."""
        src = self.diffusers_source("text_encoder")
        config = ""
        local = Path(src) / _subfolder(src, "text_encoder") / "config.json"
        if local.exists():
            config = local.read_text(encoding="utf-8")
        ident = {"source": str(Path(src).resolve()) if Path(src).exists() else src, "config": config,
                 "variant": self.params.get("variant"), "dtype": str(self.component_dtype("text_encoder")),
                 "tokenizer": type(self.tokenizer).__name__, "vocab": len(self.tokenizer),
                 "max_length": TEXT_MAX_LENGTH}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    # ---- text ---------------------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> list[Any]:
        """T5 last hidden states per prompt at its real tokens only, (n_tokens, D) on the CPU; cached."""
        import torch

        out: dict[str, Any] = {}
        missing = []
        for text in dict.fromkeys(prompts):
            hit = self.cache.get(text)
            if hit is None:
                missing.append(text)
            else:
                out[text] = hit
        if missing:
            if self.text_encoder is None:
                self._load_text_encoder()
            tok = self.tokenizer(missing, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True,
                                 return_tensors="pt")
            device = self.device
            with torch.inference_mode():
                hidden = self.text_encoder(input_ids=tok.input_ids.to(device),
                                           attention_mask=tok.attention_mask.to(device)).last_hidden_state
            for i, text in enumerate(missing):
                n = int(tok.attention_mask[i].sum())
                out[text] = hidden[i, :n].detach().cpu().clone()
                self.cache.put(text, out[text])
            self._offload("text_encoder")
        return [out[t] for t in prompts]

    def context(self, hidden) -> tuple[Any, Any]:
        """Projected context of one prompt as the release builds it: projection, then one zero position with mask
        0 after the real tokens (the cut to mask length + 1), unless the prompt fills all 128 tokens."""
        import torch

        dtype = self.null_embedding.dtype
        n = hidden.shape[0]
        ctx = self.projection(hidden.to(device=self.device, dtype=dtype))
        mask = torch.ones(n, dtype=torch.long, device=self.device)
        if n < TEXT_MAX_LENGTH:
            ctx = torch.cat([ctx, ctx.new_zeros(1, ctx.shape[1])])
            mask = torch.cat([mask, mask.new_zeros(1)])
        return ctx[None], mask[None]

    # ---- generation ---------------------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        return (4, int(self.params["height"]) // 8, int(self.params["width"]) // 8)

    def unet_fn(self, x, t: int, context, mask):
        import torch

        dtype = self.null_embedding.dtype
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        eps = self.unet(x.to(dtype), tt, encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                        return_dict=False)[0]
        return eps.float()

    def negative_prompts(self, requests: Sequence[GenRequest]) -> list[str | None]:
        default = self.params.get("negative_prompt")
        return [r.negative_prompt if r.negative_prompt is not None else default for r in requests]

    def _sync(self) -> float:
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        import torch

        self.ensure_loaded()
        reset_peak_memory(self.device)
        n = len(requests)
        t0 = self._sync()
        with torch.inference_mode():
            contexts = self.build_contexts(requests)
            t1 = self._sync()
            groups: dict[int, list[int]] = {}
            for i, c in enumerate(contexts):
                groups.setdefault(int(c[0].shape[1]), []).append(i)
            latents: list[Any] = [None] * n
            evals = 0
            for idx in groups.values():
                x, evals = self.denoise([requests[i] for i in idx], [contexts[i] for i in idx])
                for j, i in enumerate(idx):
                    latents[i] = x[j]
            self._offload("unet")
            t2 = self._sync()
            images = self.decode(torch.stack(latents))
            self._offload("movq")
            t3 = self._sync()
        extra = {"text_seconds": (t1 - t0) / n, "denoise_seconds": (t2 - t1) / n, "decode_seconds": (t3 - t2) / n,
                 "unet_evals": evals, "peak_memory_mb": peak_memory_mb(self.device)}
        return [GenOutput(images[i], dict(extra)) for i in range(n)]

    def build_contexts(self, requests: Sequence[GenRequest]) -> list[tuple[Any, ...]]:
        """Per request (cond, cond_mask, uncond, uncond_mask), each with a batch dimension of 1."""
        from k3eval.generators.kandinsky3_sampler import guidance_contexts

        negatives = self.negative_prompts(requests)
        hidden = self.encode([r.prompt for r in requests] + [t for t in negatives if t is not None])
        neg_hidden = iter(hidden[len(requests):])
        out = []
        for neg, h in zip(negatives, hidden):
            ctx, mask = self.context(h)
            nctx, nmask = self.context(next(neg_hidden)) if neg is not None else (None, None)
            out.append(guidance_contexts(ctx, mask, self.null_embedding, nctx, nmask))
        return out

    def denoise(self, requests: Sequence[GenRequest], contexts: Sequence[tuple[Any, ...]]):
        import torch

        from k3eval.generators.kandinsky3_sampler import per_image_noise, sample_released

        shape = self.latent_shape()
        noise = torch.stack([cpu_noise(r.seed, shape) for r in requests]).to(self.device)
        cat = [torch.cat([c[k] for c in contexts]) for k in range(4)]
        p = self.params
        return sample_released(self.unet_fn, noise, cat[0], cat[1], cat[2], cat[3], steps=int(p["steps"]),
                               guidance=float(p["guidance"]), eta=float(p["eta"]),
                               quantile=float(p["threshold_quantile"]),
                               step_noise=per_image_noise(step_generators(requests), shape))

    def decode(self, latents) -> np.ndarray:
        """MoVQ decode, then clip((x + 1) / 2, 0, 1); float32 NHWC."""
        dtype = self.component_dtype("movq")
        image = self.movq.decode(latents.to(device=self.device, dtype=dtype), force_not_quantize=True).sample
        image = ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return image.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    # ---- what the run records -----------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Offload and the embedding cache do not change images, so a resume may change them."""
        params = {k: v for k, v in self.params.items() if k not in ("offload", "embedding_cache")}
        return {"generator": self.name, "params": params}

    def weights_info(self) -> dict[str, Any]:
        p = self.params
        info: dict[str, Any] = {
            "sampler": self.sampler,
            "unet": p.get("unet") or f"{p['weights_repo']}/{self.unet_file}",
            "projection": p.get("projection") or f"{p['weights_repo']}/{self.projection_file}",
            "text_encoder": self.diffusers_source("text_encoder"), "movq": self.diffusers_source("movq"),
            "dtypes": {c: str(self.component_dtype(c)).replace("torch.", "") for c in self.component_dtypes},
            "offload": p["offload"],
        }
        if self._sources:
            info["loaded"] = dict(self._sources)
        if self.cache is not None:
            info["embedding_cache"] = {"path": str(self.cache.root) if self.cache.root else None,
                                       "hits": self.cache.hits, "misses": self.cache.misses}
        return info

    def close(self) -> None:
        self.unet = self.projection = self.null_embedding = self.movq = None
        self.tokenizer = self.text_encoder = None
        self._hooks = {}
        self._loaded = False


class Kandinsky3FlashGenerator(Kandinsky3ReleasedGenerator):
    """Kandinsky 3.1 Flash: 4 U-Net passes (979, 729, 479, 229), no guidance, its own U-Net and projection."""

    defaults: ClassVar[dict[str, Any]] = {**Kandinsky3ReleasedGenerator.defaults, "steps": 4, "guidance": None}
    unet_file: ClassVar[str] = "weights/kandinsky3_flash.pt"
    projection_file: ClassVar[str] = "weights/flan_ul2_encoder/projection_flash.pt"
    sampler: ClassVar[str] = "flash"

    def check_sampler_params(self) -> None:
        from k3eval.generators.kandinsky3_sampler import FLASH_TIMESTEPS

        p = self.params
        ignored = []
        if p.get("guidance") is not None:
            ignored.append(f"guidance={p['guidance']}")
        if int(p["steps"]) != len(FLASH_TIMESTEPS):
            ignored.append(f"steps={p['steps']}")
        if p.get("negative_prompt") is not None:
            ignored.append("negative_prompt")
        if ignored:
            msg = (f"{self.name}: {', '.join(ignored)} ignored: Flash always makes {len(FLASH_TIMESTEPS)} unguided "
                   f"U-Net passes at timesteps {list(FLASH_TIMESTEPS)}")
            self.warnings.append(msg)
            log.warning(msg)
            p["steps"], p["guidance"] = len(FLASH_TIMESTEPS), None

    def negative_prompts(self, requests: Sequence[GenRequest]) -> list[str | None]:
        return [None] * len(requests)

    def build_contexts(self, requests: Sequence[GenRequest]) -> list[tuple[Any, ...]]:
        return [self.context(h) for h in self.encode([r.prompt for r in requests])]

    def denoise(self, requests: Sequence[GenRequest], contexts: Sequence[tuple[Any, ...]]):
        import torch

        from k3eval.generators.kandinsky3_sampler import per_image_noise, sample_flash

        shape = self.latent_shape()
        noise = torch.stack([cpu_noise(r.seed, shape) for r in requests]).to(self.device)
        ctx = torch.cat([c[0] for c in contexts])
        mask = torch.cat([c[1] for c in contexts])
        return sample_flash(self.unet_fn, noise, ctx, mask, step_noise=per_image_noise(step_generators(requests),
                                                                                         shape))


# ---- tiny offline counterparts ------------------------------------------------------------------------------------
#: A tiny config of the official architecture: 4 levels, 3 blocks per level, attention at the 3 lower levels, so
#: the key names are exactly those of the official checkpoints (only the shapes are small).
TINY_UNET_CONFIG: dict[str, Any] = {"in_channels": 4, "time_embedding_dim": 32, "groups": 4, "attention_head_dim": 8,
                                    "layers_per_block": 3, "block_out_channels": (16, 32, 64, 64),
                                    "cross_attention_dim": 32, "encoder_hid_dim": 32}
TINY_RELEASED = "tiny-kandinsky3-released"
TINY_WEIGHTS_SEEDS = {"weights/kandinsky3.pt": 10, "weights/kandinsky3_flash.pt": 11}


def build_tiny_unet(seed: int):
    """A tiny Kandinsky3UNet with seeded random weights; tensors diffusers initialises to zero (the time
    modulation) get small random values too, so a swapped tensor in a conversion would change the output."""
    import torch
    from diffusers import Kandinsky3UNet

    torch.manual_seed(seed)
    unet = Kandinsky3UNet(**TINY_UNET_CONFIG).eval()
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return unet


def write_official_checkpoint(unet, null_embedding, unet_path: Path, projection_path: Path) -> None:
    """Save a diffusers Kandinsky3UNet as the official files: {'unet', 'null_embedding'} and the projection."""
    import torch

    from k3eval.generators.kandinsky3_convert import to_official

    unet_sd, proj_sd = to_official({k: v.detach().clone() for k, v in unet.state_dict().items()})
    unet_path.parent.mkdir(parents=True, exist_ok=True)
    projection_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"unet": unet_sd, "null_embedding": null_embedding}, unet_path)
    torch.save(proj_sd, projection_path)


def _build_tiny_released(folder: Path) -> None:
    import torch

    for unet_file, seed in TINY_WEIGHTS_SEEDS.items():
        unet = build_tiny_unet(seed)
        g = torch.Generator().manual_seed(seed + 100)
        null = torch.randn(TINY_UNET_CONFIG["cross_attention_dim"], generator=g)
        proj_name = "projection_flash.pt" if "flash" in unet_file else "projection.pt"
        write_official_checkpoint(unet, null, folder / unet_file, folder / "weights" / "flan_ul2_encoder" / proj_name)


def tiny_released_folder() -> Path:
    from k3eval.generators.tiny import tiny_folder

    return tiny_folder(TINY_RELEASED, _build_tiny_released)


def tiny_pipeline_folder() -> Path:
    """The tiny diffusers-format Kandinsky 3 folder (T5 encoder, tokenizer, MoVQ) shared with `tiny-kandinsky3`."""
    from k3eval.generators.tiny import TINY_BUILDERS, tiny_folder

    return tiny_folder("tiny-kandinsky3", TINY_BUILDERS["tiny-kandinsky3"])


class _TinyMixin:
    offline: ClassVar[bool] = True

    def weights_file(self, param: str, filename: str) -> Path:
        if self.params.get(param):
            return super().weights_file(param, filename)  # type: ignore[misc]
        return tiny_released_folder() / filename

    def diffusers_source(self, param: str) -> str:
        return str(self.params.get(param) or tiny_pipeline_folder())

    def weights_info(self) -> dict[str, Any]:
        from k3eval.generators.tiny import TINY_VERSION

        info = super().weights_info()  # type: ignore[misc]
        return {**info, "model": f"tiny:{self.name}", "random_weights": True, "tiny_version": TINY_VERSION,
                "unet": f"tiny:{self.unet_file}", "projection": f"tiny:{self.projection_file}",  # type: ignore
                "text_encoder": "tiny:tiny-kandinsky3/text_encoder", "movq": "tiny:tiny-kandinsky3/movq"}


_TINY_DEFAULTS = {"height": 64, "width": 64, "variant": None, "text_encoder_dtype": None, "head_dim": 8, "groups": 4}


class TinyKandinsky3ReleasedGenerator(_TinyMixin, Kandinsky3ReleasedGenerator):
    """`kandinsky3` on tiny random components (official-layout .pt U-Net, T5, MoVQ); offline."""

    defaults: ClassVar[dict[str, Any]] = {**Kandinsky3ReleasedGenerator.defaults, **_TINY_DEFAULTS, "steps": 4}
    component_dtypes: ClassVar[dict[str, str]] = {"unet": "fp32", "text_encoder": "fp32", "movq": "fp32"}


class TinyKandinsky3FlashGenerator(_TinyMixin, Kandinsky3FlashGenerator):
    """`kandinsky3-flash` on tiny random components; offline."""

    defaults: ClassVar[dict[str, Any]] = {**Kandinsky3FlashGenerator.defaults, **_TINY_DEFAULTS}
    component_dtypes: ClassVar[dict[str, str]] = {"unet": "fp32", "text_encoder": "fp32", "movq": "fp32"}


# ---- Kandinsky 3.0 via diffusers -----------------------------------------------------------------------------------
class Kandinsky3DiffusersGenerator(DiffusersPipelineGenerator):
    """diffusers' Kandinsky3Pipeline as it is (DDPM, squaredcos_cap_v2, static x0 clipping, zero unconditional
    context, guidance only when > 1), with the same per-stage timing as the released generators.

    The pipeline cuts a batch's contexts to its longest prompt, which changes the image (see the module docstring),
    so each call holds only prompts of equal token count: an image never depends on its batch."""

    defaults: ClassVar[dict[str, Any]] = {**DiffusersPipelineGenerator.defaults, "model": DIFFUSERS_REPO,
                                          "pipeline_class": "Kandinsky3Pipeline", "height": 1024, "width": 1024,
                                          "steps": 25, "guidance": 3.0, "variant": "fp16", "offload": "none"}

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        if self.params["offload"] not in OFFLOAD_MODES:
            raise UserError(f"parameter 'offload' of '{name}': got {self.params['offload']!r}; use one of "
                            f"{', '.join(OFFLOAD_MODES)}")
        if self.params["offload"] != "none" and not device.startswith("cuda"):
            # diffusers' offload moves weights between the CPU and an accelerator; on the CPU its sequential mode
            # fails inside accelerate, and neither would save anything
            raise UserError(f"parameter 'offload' of '{name}': offload={self.params['offload']} needs a CUDA device, "
                            f"got --device {device}")
        round_size("height", name, self.params, self.warnings)
        round_size("width", name, self.params, self.warnings)

    def load(self) -> None:
        super().load()
        mode = self.params["offload"]
        if mode != "none":
            # undo the .to(device) of the base class: offload keeps weights on the CPU until used
            self.pipe.to("cpu")
            if mode == "model":
                self.pipe.enable_model_cpu_offload(device=self.device)
            else:
                self.pipe.enable_sequential_cpu_offload(device=self.device)

    def latent_shape(self) -> tuple[int, ...]:
        return (4, int(self.params["height"]) // 8, int(self.params["width"]) // 8)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        import torch

        self.ensure_loaded()
        reset_peak_memory(self.device)
        pipe = self.pipe
        n = len(requests)
        lengths = pipe.tokenizer([r.prompt for r in requests], max_length=TEXT_MAX_LENGTH, truncation=True
                                 ).input_ids
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(lengths):
            groups.setdefault(len(ids), []).append(i)
        guidance = float(self.params["guidance"])
        steps = int(self.params["steps"])
        latents: list[Any] = [None] * n
        t_text = t_denoise = 0.0
        with torch.inference_mode():
            for idx in groups.values():
                sub = [requests[i] for i in idx]
                kwargs = self.call_kwargs(sub)
                t0 = _sync(self.device)
                pe, npe, am, nam = pipe.encode_prompt(kwargs["prompt"], guidance > 1.0, num_images_per_prompt=1,
                                                      device=pipe._execution_device,
                                                      negative_prompt=kwargs.get("negative_prompt"),
                                                      _cut_context=True)
                t1 = _sync(self.device)
                out = pipe(prompt_embeds=pe, negative_prompt_embeds=npe, attention_mask=am,
                           negative_attention_mask=nam, num_inference_steps=steps, guidance_scale=guidance,
                           height=kwargs["height"], width=kwargs["width"], output_type="latent",
                           latents=self.initial_latents(sub), generator=step_generators(sub))
                t2 = _sync(self.device)
                t_text += t1 - t0
                t_denoise += t2 - t1
                for j, i in enumerate(idx):
                    latents[i] = out.images[j]
            t2 = _sync(self.device)
            image = pipe.movq.decode(torch.stack(latents), force_not_quantize=True).sample
            images = (image.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
            pipe.maybe_free_model_hooks()
            t3 = _sync(self.device)
        extra = {"text_seconds": t_text / n, "denoise_seconds": t_denoise / n, "decode_seconds": (t3 - t2) / n,
                 "unet_evals": steps * (2 if guidance > 1.0 else 1), "peak_memory_mb": peak_memory_mb(self.device)}
        return [GenOutput(images[i], dict(extra)) for i in range(n)]

    def weights_info(self) -> dict[str, Any]:
        return {"model": self.params.get("model"), "sampler": "diffusers Kandinsky3Pipeline",
                "variant": self.params.get("variant"), "offload": self.params["offload"]}


def _sync(device: str) -> float:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
