"""Kandinsky 3.0 as released, Kandinsky 3.1 Flash, and Kandinsky 3.0 as diffusers runs it.

- `kandinsky3`: the official sampler (`kandinsky3_sampler.sample_released`) on the official weights of
  `ai-forever/Kandinsky3.1` (`weights/kandinsky3.pt` + `projection.pt`, and `weights/movq.pt`, the decoder the release
  uses), converted in memory to diffusers' `Kandinsky3UNet` and `VQModel`; the T5 encoder and its tokenizer come from
  the diffusers-format repo `kandinsky-community/kandinsky-3`.
- `kandinsky3-flash`: the 4-step Flash sampler on `kandinsky3_flash.pt` + `projection_flash.pt`; same encoder, MoVQ.
- `kandinsky3-diffusers`: diffusers' `Kandinsky3Pipeline` unchanged (DDPM, static clipping, zero null context).
- `tiny-kandinsky3-released` / `tiny-kandinsky3-flash`: the first two on tiny random components whose U-Net and MoVQ
  checkpoints are written in the official key layout and .pt format, so tests run the real conversion path.

What the release does, and k3eval with it by default (docs/kandinsky3.md has the table of what still differs):
- Text: the prompt's T5 tokens (at most 128); the T5 output is projected (Linear without bias, LayerNorm) with the
  projection cast to the text encoder's dtype, under CUDA autocast, so the Linear runs in fp16 and the LayerNorm in
  float32 (`projection_dtype=text_encoder`; `unet` runs both in the U-Net's dtype instead).
- Negative prompt: its tokens cut to the prompt's token count, the last one made end-of-text, encoded with the
  prompt's attention mask (`negative_mode=release`; `pad` encodes it whole and pads the shorter context).
- Noise: k3eval draws each image's noise on the CPU from its seed (`noise=cpu`); `noise=release` draws as the
  official loops do after `torch.manual_seed(seed)` on the device.

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

import contextlib
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
from k3eval.generators.base import Generator, GenOutput, GenRequest, check_choice, check_dtype, torch_dtype
from k3eval.generators.diffusers_pipeline import (
    DiffusersPipelineGenerator,
    dtype_kwarg,
    peak_memory_mb,
    quiet_hub_logging,
    reset_peak_memory,
    step_generators,
    transformers_dtype_kwarg,
)
from k3eval.generators.hub import DEFAULT_REVISION, download_hint
from k3eval.seeds import cpu_noise

log = logging.getLogger("k3eval")

OFFICIAL_REPO = "ai-forever/Kandinsky3.1"
DIFFUSERS_REPO = "kandinsky-community/kandinsky-3"
OFFLOAD_MODES = ("none", "model", "sequential")
NEGATIVE_MODES = ("release", "pad")
PROJECTION_DTYPES = ("text_encoder", "unet")
NOISE_MODES = ("cpu", "release")
TEXT_MAX_LENGTH = 128
_MEMORY_CACHE_SIZE = 512


def hub_file(repo: str, filename: str, param: str, revision: str | None = None) -> Path:
    """A file of a hub repo at `revision` from the local Hugging Face cache (or the hub when online), with a clear
    error."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision or DEFAULT_REVISION))
    except Exception as e:  # noqa: BLE001 - hub errors vary by version (offline, missing, gated); all mean "not here"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot find '{filename}' of the hub repo '{repo}' (revision {revision or 'main'}: {first}). "
                        f"Offline, download it on a machine with access ({download_hint(repo, (filename,), revision)})"
                        f" into the Hugging Face cache, or pass a local file with --set {param}=/path/to/"
                        f"{Path(filename).name}") from None


def _subfolder(source: str, name: str) -> str:
    """A pipeline folder (hub id or local) holds components in subfolders; a local component folder holds it alone."""
    p = Path(source)
    if p.is_dir() and not (p / name).is_dir():
        return ""
    return name


class PromptEmbeddingCache:
    """T5 outputs per token sequence (before the projection, so 3.0 and Flash share them), kept in memory for the
    run and on disk under `root/<encoder key>/`, one safetensors file per sequence named by the sha256 of its key
    (the comma-joined token ids, which the file also stores to guard against a collision)."""

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
        "negative_prompt": None, "negative_mode": "release", "projection_dtype": "text_encoder", "noise": "cpu",
        "unet": None, "projection": None, "movq": None, "weights_repo": OFFICIAL_REPO, "revision": DEFAULT_REVISION,
        "text_encoder": None, "text_encoder_revision": DEFAULT_REVISION, "movq_revision": DEFAULT_REVISION,
        "variant": "fp16", "unet_dtype": None, "text_encoder_dtype": None, "movq_dtype": None,
        "offload": "none", "embedding_cache": "auto", "head_dim": 64, "groups": 32,
    }
    #: the hub files of the official weights repo
    unet_file: ClassVar[str] = "weights/kandinsky3.pt"
    projection_file: ClassVar[str] = "weights/flan_ul2_encoder/projection.pt"
    movq_file: ClassVar[str] = "weights/movq.pt"
    #: the release's dtypes (README of ai-forever/Kandinsky-3): fp32 U-Net and MoVQ, fp16 text encoder
    component_dtypes: ClassVar[dict[str, str]] = {"unet": "fp32", "text_encoder": "fp16", "movq": "fp32"}
    sampler: ClassVar[str] = "released"
    size_multiple: ClassVar[int] = 64
    rounds_size: ClassVar[bool] = True
    size_reason: ClassVar[str] = " (MoVQ x8, U-Net x8)"

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        p = self.params
        for key in ("unet_dtype", "text_encoder_dtype", "movq_dtype"):
            try:
                check_dtype(p[key])
            except UserError:
                raise UserError(f"parameter '{key}' of '{name}': unknown dtype {p[key]!r}; use fp32, fp16 or bf16") \
                    from None
        check_choice(name, p, "offload", OFFLOAD_MODES)
        check_choice(name, p, "negative_mode", NEGATIVE_MODES)
        check_choice(name, p, "projection_dtype", PROJECTION_DTYPES)
        check_choice(name, p, "noise", NOISE_MODES)
        if not 0.0 < float(p["threshold_quantile"]) <= 1.0:
            raise UserError(f"parameter 'threshold_quantile' of '{name}' must be in (0, 1], "
                            f"got {p['threshold_quantile']}")
        if float(p.get("eta") or 0.0) < 0:
            raise UserError(f"parameter 'eta' of '{name}' must be >= 0, got {p['eta']}")
        for key in ("head_dim", "groups"):
            if int(p[key]) < 1:
                raise UserError(f"parameter '{key}' of '{name}' must be at least 1, got {p[key]}")
        self.check_sampler_params()
        self.unet = self.projection = self.null_embedding = self.movq = None
        self.tokenizer = self.text_encoder = None
        self.cache: PromptEmbeddingCache | None = None
        self._hooks: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def check_sampler_params(self) -> None:
        if self.params["guidance"] is None:
            raise UserError(f"parameter 'guidance' of '{self.name}' must be a number (the release uses 3.0)")

    # ---- where things come from -----------------------------------------------------------------------------------
    def component_dtype(self, component: str):
        """The dtype of a component: its own parameter, else --dtype, else the release's choice."""
        name = self.params.get(f"{component}_dtype") or self.dtype or self.component_dtypes[component]
        return torch_dtype(name)

    def context_dtype(self):
        """The dtype of the projected context and the null embedding: float32 as in the release (its LayerNorm runs
        in float32 under autocast), or the U-Net's with `projection_dtype=unet`."""
        import torch

        return torch.float32 if self.params["projection_dtype"] == "text_encoder" else self.component_dtype("unet")

    def weights_file(self, param: str, filename: str) -> Path:
        """A local path given as parameter `param`, else `filename` of the official weights repo at `revision`."""
        given = self.params.get(param)
        if given:
            p = Path(str(given)).expanduser()
            if not p.exists():
                raise UserError(f"parameter '{param}' of '{self.name}': {p} does not exist")
            self.record_source(param, str(p), None, "")
            return p
        repo, revision = str(self.params["weights_repo"]), self.params.get("revision")
        path = hub_file(repo, filename, param, revision)
        self.record_source(param, repo, revision, filename)
        return path

    def diffusers_source(self, param: str) -> str:
        """Hub id or local folder of the text encoder (a diffusers-format Kandinsky 3 repo by default)."""
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
            conv.check_groups_and_heads(unet_sd, int(self.params["groups"]), int(self.params["head_dim"]),
                                        f"U-Net checkpoint {path}", ("--set groups=", "--set head_dim="))
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

        # the projection runs outside the U-Net (see the module docstring), in the dtype `projection_dtype` names
        proj_dtype = (self.component_dtype("text_encoder") if self.params["projection_dtype"] == "text_encoder"
                      else self.component_dtype("unet"))
        self.projection = unet.encoder_hid_proj.to(device=self.device, dtype=proj_dtype).eval()
        unet.encoder_hid_proj = torch.nn.Identity()
        self.unet = unet.eval()
        self.null_embedding = null_embedding.reshape(-1).to(device=self.device, dtype=self.context_dtype())

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

    def _movq_is_official_file(self) -> bool:
        given = self.params.get("movq")
        return not given or Path(str(given)).expanduser().is_file()

    def _load_movq(self) -> None:
        from k3eval.generators import kandinsky3_convert as conv

        dtype = self.component_dtype("movq")
        if self._movq_is_official_file():
            path = self.weights_file("movq", self.movq_file)
            self.movq = conv.build_movq(conv.load_official_movq(path), source=f"MoVQ checkpoint {path}", dtype=dtype)
            self._sources["movq"] = {"path": str(path), "format": "official .pt"}
            return
        # a diffusers VQModel: a pipeline repo or folder with a movq/ subfolder, or the component folder itself
        from diffusers import VQModel

        src, revision = self.diffusers_source("movq"), self.params.get("movq_revision")
        sub = _subfolder(src, "movq")
        kwargs: dict[str, Any] = {dtype_kwarg(): dtype, "revision": revision}
        if self.params.get("variant"):
            # kandinsky-community/kandinsky-3 holds its MoVQ only as the fp16 variant
            kwargs["variant"] = self.params["variant"]
        try:
            self.movq = VQModel.from_pretrained(src, subfolder=sub or None, **kwargs).eval()
        except (OSError, ValueError) as e:
            raise self._missing(src, "movq", "movq", e, revision) from None
        self.record_source("movq", src, revision, f"{sub}/config.json" if sub else "config.json")
        self._sources["movq"] = {"source": src, "format": "diffusers VQModel", "variant": self.params.get("variant")}

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        src, revision = self.diffusers_source("text_encoder"), self.params.get("text_encoder_revision")
        sub = _subfolder(src, "tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src, subfolder=sub, revision=revision)
        except (OSError, ValueError) as e:
            raise self._missing(src, "tokenizer", "text_encoder", e, revision) from None
        self.record_source("tokenizer", src, revision, f"{sub}/tokenizer_config.json" if sub
                           else "tokenizer_config.json")
        self._sources["text_encoder"] = src

    def _load_text_encoder(self) -> None:
        """Loaded on the first prompt missing from the embedding cache: a fully cached run never loads the 8.6B
        encoder."""
        from transformers import T5EncoderModel

        src, revision = self.diffusers_source("text_encoder"), self.params.get("text_encoder_revision")
        sub = _subfolder(src, "text_encoder")
        kwargs: dict[str, Any] = {transformers_dtype_kwarg(): self.component_dtype("text_encoder"),
                                  "revision": revision}
        if self.params.get("variant"):
            kwargs["variant"] = self.params["variant"]
        try:
            self.text_encoder = T5EncoderModel.from_pretrained(src, subfolder=sub, **kwargs).eval()
        except (OSError, ValueError) as e:
            raise self._missing(src, "text_encoder", "text_encoder", e, revision) from None
        self.record_source("text_encoder", src, revision, f"{sub}/config.json" if sub else "config.json")
        self._place(["text_encoder"])

    def _missing(self, src: str, subfolder: str, param: str, err: Exception, revision: str | None) -> UserError:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = download_hint(src if "/" in src and not Path(src).exists() else DIFFUSERS_REPO, revision=revision,
                             include=f"{subfolder}/*")
        return UserError(f"{self.name}: cannot load the {subfolder} from '{src}' ({first}). Offline, download it on a "
                         f"machine with access ({hint}) into the Hugging Face cache, or pass a local folder with "
                         f"--set {param}=/path/to/folder")

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

    def _autocast(self) -> bool:
        """The release runs its fp16 T5 under CUDA autocast (which computes some element-wise ops in float32)."""
        import torch

        return self.device.startswith("cuda") and self.component_dtype("text_encoder") in (torch.float16,
                                                                                           torch.bfloat16)

    def _encoder_key(self) -> str:
        """Identity of the text-encoder output for given token ids: source, revision, config, variant, dtype,
        autocast."""
        src = self.diffusers_source("text_encoder")
        config = ""
        local = Path(src) / _subfolder(src, "text_encoder") / "config.json"
        if local.exists():
            config = local.read_text(encoding="utf-8")
        ident = {"source": str(Path(src).resolve()) if Path(src).exists() else src, "config": config,
                 "revision": self.params.get("text_encoder_revision"), "variant": self.params.get("variant"),
                 "dtype": str(self.component_dtype("text_encoder")), "autocast": self._autocast(), "keys": "token ids"}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    # ---- text ---------------------------------------------------------------------------------------------------
    def tokens(self, text: str) -> tuple[list[int], int]:
        """(ids the release encodes: at most 128, ending with end-of-text; the prompt's full token count)."""
        full = len(self.tokenizer(text, truncation=False, verbose=False).input_ids)
        ids = self.tokenizer(text, max_length=TEXT_MAX_LENGTH, truncation=True).input_ids
        return list(ids), full

    def encode(self, sequences: Sequence[Sequence[int]]) -> list[Any]:
        """T5 last hidden states of each token-id sequence at its own positions, (n_tokens, D) on the CPU; every
        sequence is attended in full and padded to 128 with attention 0, as the release encodes. Cached by the ids."""
        import torch

        keys = [",".join(map(str, ids)) for ids in sequences]
        out: dict[str, Any] = {}
        missing: dict[str, Sequence[int]] = {}
        for key, ids in zip(keys, sequences):
            if key in out or key in missing:
                continue
            hit = self.cache.get(key)
            if hit is None:
                missing[key] = ids
            else:
                out[key] = hit
        if missing:
            if self.text_encoder is None:
                self._load_text_encoder()
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.full((len(missing), TEXT_MAX_LENGTH), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, ids in enumerate(missing.values()):
                input_ids[i, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
                mask[i, :len(ids)] = 1
            autocast = (torch.autocast("cuda", dtype=self.component_dtype("text_encoder")) if self._autocast()
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                hidden = self.text_encoder(input_ids=input_ids.to(self.device),
                                           attention_mask=mask.to(self.device)).last_hidden_state
            for i, (key, ids) in enumerate(missing.items()):
                out[key] = hidden[i, :len(ids)].detach().cpu().clone()
                self.cache.put(key, out[key])
            self._offload("text_encoder")
        return [out[k] for k in keys]

    def context(self, hidden) -> tuple[Any, Any]:
        """Projected context of one sequence as the release builds it: projection, then one zero position with mask
        0 after the real tokens (the cut to mask length + 1), unless the sequence fills all 128 tokens."""
        import torch
        import torch.nn.functional as F

        proj = self.projection
        if self.params["projection_dtype"] == "text_encoder":
            # the release: the projection cast to the text encoder's dtype, under CUDA autocast, where the Linear
            # runs in that dtype and the LayerNorm in float32
            x = proj.projection_linear(hidden.to(device=self.device, dtype=proj.projection_linear.weight.dtype))
            norm = proj.projection_norm
            ctx = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
        else:
            ctx = proj(hidden.to(device=self.device, dtype=proj.projection_linear.weight.dtype))
        n = hidden.shape[0]
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

        dtype = self.component_dtype("unet")
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        eps = self.unet(x.to(dtype), tt, encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                        return_dict=False)[0]
        return eps.float()

    def negative_prompts(self, requests: Sequence[GenRequest]) -> list[str | None]:
        default = self.params.get("negative_prompt")
        return [r.negative_prompt if r.negative_prompt is not None else default for r in requests]

    def _sync(self) -> float:
        return _sync(self.device)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        import torch

        self.ensure_loaded()
        reset_peak_memory(self.device)
        n = len(requests)
        t0 = self._sync()
        with torch.inference_mode():
            contexts, extras = self.build_contexts(requests)
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
        self.note_output_size(*images.shape[1:3])
        extra = {"text_seconds": (t1 - t0) / n, "denoise_seconds": (t2 - t1) / n, "decode_seconds": (t3 - t2) / n,
                 "unet_evals": evals, "peak_memory_mb": peak_memory_mb(self.device)}
        return [GenOutput(images[i], {**extra, **extras[i]}) for i in range(n)]

    def prompt_tokens(self, requests: Sequence[GenRequest]) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """Each prompt's ids and its manifest columns (token count, whether the 128-token limit cut it)."""
        ids, extras = [], []
        for r in requests:
            seq, full = self.tokens(r.prompt)
            ids.append(seq)
            extras.append(self.token_extras(r.prompt, full, TEXT_MAX_LENGTH))
        return ids, extras

    def build_contexts(self, requests: Sequence[GenRequest]) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        """Per request (cond, cond_mask, uncond, uncond_mask), each with a batch dimension of 1, and its manifest
        columns. A negative prompt's ids follow `negative_mode` (see `kandinsky3_sampler.release_negative_ids`)."""
        from k3eval.generators.kandinsky3_sampler import guidance_contexts, release_negative_ids

        ids, extras = self.prompt_tokens(requests)
        negatives = self.negative_prompts(requests)
        neg_ids: list[list[int] | None] = []
        for seq, neg in zip(ids, negatives):
            if neg is None:
                neg_ids.append(None)
                continue
            own = self.tokens(neg)[0]
            neg_ids.append(release_negative_ids(seq, own, self.tokenizer.eos_token_id,
                                                self.tokenizer.pad_token_id or 0)
                           if self.params["negative_mode"] == "release" else own)
        hidden = self.encode(ids + [x for x in neg_ids if x is not None])
        neg_hidden = iter(hidden[len(requests):])
        out = []
        for neg, h in zip(neg_ids, hidden):
            ctx, mask = self.context(h)
            nctx, nmask = self.context(next(neg_hidden)) if neg is not None else (None, None)
            out.append(guidance_contexts(ctx, mask, self.null_embedding, nctx, nmask))
        return out, extras

    def noise(self, requests: Sequence[GenRequest]):
        """(start latents on the device, step noise fn) by the `noise` rule."""
        import torch

        from k3eval.generators.kandinsky3_sampler import per_image_noise, release_noise

        shape = self.latent_shape()
        if self.params["noise"] == "release":
            return release_noise([r.seed for r in requests], shape, self.device)
        start = torch.stack([cpu_noise(r.seed, shape) for r in requests]).to(self.device)
        return start, per_image_noise(step_generators(requests), shape)

    def denoise(self, requests: Sequence[GenRequest], contexts: Sequence[tuple[Any, ...]]):
        import torch

        from k3eval.generators.kandinsky3_sampler import sample_released

        start, step_noise = self.noise(requests)
        cat = [torch.cat([c[k] for c in contexts]) for k in range(4)]
        p = self.params
        return sample_released(self.unet_fn, start, cat[0], cat[1], cat[2], cat[3], steps=int(p["steps"]),
                               guidance=float(p["guidance"]), eta=float(p["eta"]),
                               quantile=float(p["threshold_quantile"]), step_noise=step_noise)

    def decode(self, latents) -> np.ndarray:
        """MoVQ decode, then clip((x + 1) / 2, 0, 1); float32 NHWC."""
        dtype = self.component_dtype("movq")
        image = self.movq.decode(latents.to(device=self.device, dtype=dtype), force_not_quantize=True).sample
        image = ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return image.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    # ---- what the run records -----------------------------------------------------------------------------------
    def noise_rule(self) -> str:
        if self.params["noise"] == "release":
            return ("noise=release: a generator of the device per image, seeded with the image seed, drawing as the "
                    "official sampler does after torch.manual_seed(seed) (start latents, then one draw per step)")
        return super().noise_rule()

    def identity(self) -> dict[str, Any]:
        """Offload and the embedding cache do not change images, so a resume may change them."""
        params = {k: v for k, v in self.params.items() if k not in ("offload", "embedding_cache")}
        return {"generator": self.name, "params": params}

    def weights_info(self) -> dict[str, Any]:
        p = self.params

        def official(param: str, filename: str) -> str:
            return str(p.get(param) or f"{p['weights_repo']}/{filename}")

        dtypes = {c: str(self.component_dtype(c)).replace("torch.", "") for c in self.component_dtypes}
        linear = dtypes["text_encoder"] if p["projection_dtype"] == "text_encoder" else dtypes["unet"]
        info: dict[str, Any] = {
            "sampler": self.sampler,
            "unet": official("unet", self.unet_file), "projection": official("projection", self.projection_file),
            "movq": official("movq", self.movq_file) if self._movq_is_official_file() else str(p["movq"]),
            "text_encoder": self.diffusers_source("text_encoder"), "dtypes": dtypes,
            "context": {"projection_dtype": p["projection_dtype"], "projection_linear": linear,
                        "projection_norm": "float32" if p["projection_dtype"] == "text_encoder" else dtypes["unet"],
                        "null_embedding": str(self.context_dtype()).replace("torch.", ""),
                        "text_encoder_autocast": self._autocast()},
            "negative_mode": p["negative_mode"], "noise": p["noise"], "offload": p["offload"],
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
            self.warn(f"{self.name}: {', '.join(ignored)} ignored: Flash always makes {len(FLASH_TIMESTEPS)} unguided "
                      f"U-Net passes at timesteps {list(FLASH_TIMESTEPS)}")
            p["steps"], p["guidance"] = len(FLASH_TIMESTEPS), None

    def negative_prompts(self, requests: Sequence[GenRequest]) -> list[str | None]:
        return [None] * len(requests)

    def build_contexts(self, requests: Sequence[GenRequest]) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        ids, extras = self.prompt_tokens(requests)
        return [self.context(h) for h in self.encode(ids)], extras

    def denoise(self, requests: Sequence[GenRequest], contexts: Sequence[tuple[Any, ...]]):
        import torch

        from k3eval.generators.kandinsky3_sampler import sample_flash

        start, step_noise = self.noise(requests)
        ctx = torch.cat([c[0] for c in contexts])
        mask = torch.cat([c[1] for c in contexts])
        return sample_flash(self.unet_fn, start, ctx, mask, step_noise=step_noise)


# ---- tiny offline counterparts ------------------------------------------------------------------------------------
#: A tiny config of the official architecture: 4 levels, 3 blocks per level, attention at the 3 lower levels, so
#: the key names are exactly those of the official checkpoints (only the shapes are small).
TINY_UNET_CONFIG: dict[str, Any] = {"in_channels": 4, "time_embedding_dim": 32, "groups": 4, "attention_head_dim": 8,
                                    "layers_per_block": 3, "block_out_channels": (16, 32, 64, 64),
                                    "cross_attention_dim": 32, "encoder_hid_dim": 32}
TINY_RELEASED = "tiny-kandinsky3-released"
TINY_WEIGHTS_SEEDS = {"weights/kandinsky3.pt": 10, "weights/kandinsky3_flash.pt": 11}


def _seeded(cls, config: dict[str, Any], seed: int):
    """`cls(**config)` with seeded random weights; tensors diffusers initialises to zero (the U-Net's time
    modulation) get small random values too, so a swapped tensor in a conversion would change the output."""
    import torch

    torch.manual_seed(seed)
    model = cls(**config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return model


def build_tiny_unet(seed: int):
    """A tiny Kandinsky3UNet of the official architecture with seeded random weights."""
    from diffusers import Kandinsky3UNet

    return _seeded(Kandinsky3UNet, TINY_UNET_CONFIG, seed)


def write_official_checkpoint(unet, null_embedding, unet_path: Path, projection_path: Path) -> None:
    """Save a diffusers Kandinsky3UNet as the official files: {'unet', 'null_embedding'} and the projection."""
    import torch

    from k3eval.generators.kandinsky3_convert import to_official

    unet_sd, proj_sd = to_official({k: v.detach().clone() for k, v in unet.state_dict().items()})
    unet_path.parent.mkdir(parents=True, exist_ok=True)
    projection_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"unet": unet_sd, "null_embedding": null_embedding}, unet_path)
    torch.save(proj_sd, projection_path)


#: A tiny MoVQ in the official layout: 32-channel multiples because the official GroupNorms have 32 groups, two
#: resolution levels fewer than the real one's four would not exercise the level renumbering, so four are kept.
TINY_MOVQ_CONFIG: dict[str, Any] = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1,
                                    "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                                    "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
                                    "latent_channels": 4, "vq_embed_dim": 4, "norm_num_groups": 32,
                                    "norm_type": "spatial", "num_vq_embeddings": 16384, "sample_size": 64}


def build_tiny_movq(seed: int):
    """A tiny VQModel in Sber-MoVQGAN's layout with seeded random weights."""
    from diffusers import VQModel

    return _seeded(VQModel, TINY_MOVQ_CONFIG, seed)


def write_official_movq(movq, path: Path) -> None:
    """Save a diffusers VQModel as the official `movq.pt` (a plain state dict in kandinsky3/movq.py's layout)."""
    import torch

    from k3eval.generators.kandinsky3_convert import movq_to_official

    levels = len(movq.config.block_out_channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(movq_to_official({k: v.detach().clone() for k, v in movq.state_dict().items()}, levels), path)


def _build_tiny_released(folder: Path) -> None:
    import torch

    for unet_file, seed in TINY_WEIGHTS_SEEDS.items():
        unet = build_tiny_unet(seed)
        g = torch.Generator().manual_seed(seed + 100)
        null = torch.randn(TINY_UNET_CONFIG["cross_attention_dim"], generator=g)
        proj_name = "projection_flash.pt" if "flash" in unet_file else "projection.pt"
        write_official_checkpoint(unet, null, folder / unet_file, folder / "weights" / "flan_ul2_encoder" / proj_name)
    write_official_movq(build_tiny_movq(12), folder / "weights" / "movq.pt")


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
        path = tiny_released_folder() / filename
        self.record_source(param, str(path), None, "")  # type: ignore[attr-defined]
        return path

    def diffusers_source(self, param: str) -> str:
        return str(self.params.get(param) or tiny_pipeline_folder())

    def weights_info(self) -> dict[str, Any]:
        from k3eval.generators.tiny import TINY_VERSION

        info = super().weights_info()  # type: ignore[misc]
        tiny = {"unet": self.unet_file, "projection": self.projection_file, "movq": self.movq_file}  # type: ignore
        return {**info, "model": f"tiny:{self.name}", "random_weights": True, "tiny_version": TINY_VERSION,
                **{k: f"tiny:{v}" for k, v in tiny.items() if not self.params.get(k)},  # type: ignore[attr-defined]
                "text_encoder": "tiny:tiny-kandinsky3/text_encoder"}


_TINY_DEFAULTS = {"height": 64, "width": 64, "variant": None, "text_encoder_dtype": None, "head_dim": 8, "groups": 4,
                  "revision": None, "text_encoder_revision": None, "movq_revision": None}


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
    # the pipeline rounds height and width up to multiples of 64 itself: round first, so the size is recorded
    size_multiple: ClassVar[int] = 64
    rounds_size: ClassVar[bool] = True
    size_reason: ClassVar[str] = " (MoVQ x8, U-Net x8)"

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu", dtype: str | None = None):
        super().__init__(name, params, device=device, dtype=dtype)
        check_choice(name, self.params, "offload", OFFLOAD_MODES)
        if self.params["offload"] != "none" and not device.startswith("cuda"):
            # diffusers' offload moves weights between the CPU and an accelerator; on the CPU its sequential mode
            # fails inside accelerate, and neither would save anything
            raise UserError(f"parameter 'offload' of '{name}': offload={self.params['offload']} needs a CUDA device, "
                            f"got --device {device}")

    def text_limits(self) -> list[tuple[Any, int]]:
        return [(self.pipe.tokenizer, TEXT_MAX_LENGTH)]

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
        self.note_output_size(*images.shape[1:3])
        extras = self.prompt_extras(requests)
        extra = {"text_seconds": t_text / n, "denoise_seconds": t_denoise / n, "decode_seconds": (t3 - t2) / n,
                 "unet_evals": steps * (2 if guidance > 1.0 else 1), "peak_memory_mb": peak_memory_mb(self.device)}
        return [GenOutput(images[i], {**extra, **extras[i]}) for i in range(n)]

    def weights_info(self) -> dict[str, Any]:
        return {"model": self.params.get("model"), "revision": self.params.get("revision"),
                "sampler": "diffusers Kandinsky3Pipeline", "variant": self.params.get("variant"),
                "offload": self.params["offload"]}


def _sync(device: str) -> float:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
