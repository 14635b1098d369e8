"""Prompt beautification (Kandinsky 3.0 report, section 5): a causal LM rewrites each prompt before generation.

The report used Intel `neural-chat-7b-v3-1` with the system message below; the model's answer replaces the prompt.
`k3eval generate ... --beautify MODEL[@REVISION]` calls `load_beautifier` (a hub model is read at REVISION, `main`
by default, and the commit it resolved to is recorded); generate.py caches the rewrites in the run folder
(`beautified.json`, `beautified_prompt` column) and keeps the original prompt. Decoding is greedy, so a rewrite
depends only on the model and the prompt (no seed). `tiny-lm` is an offline LM built from a config with random
weights (tests, demo): its rewrites are gibberish but run the whole path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from k3eval.errors import UserError

log = logging.getLogger("k3eval")

DEFAULT_MODEL = "Intel/neural-chat-7b-v3-1"
SYSTEM_MESSAGE = ("You are a prompt engineer. Your mission is to expand prompts written by user. You should provide "
                  "the best prompt for text to image generation in English.")
TINY_MODEL = "tiny-lm"
#: neural-chat-7b-v3-1's own prompt format (its model card); used when a tokenizer has no chat template.
NEURAL_CHAT_FORMAT = "### System:\n{system}\n### User:\n{prompt}\n### Assistant:\n"
# A chat template for the tiny LM in the same spirit (jinja, as transformers expects).
_TINY_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}### assistant:\n{% endif %}")


class Beautifier:
    """Rewrites prompts with a causal LM, one prompt at a time (no padding, so a rewrite never depends on the
    other prompts), greedy decoding, at most `max_new_tokens` new tokens."""

    def __init__(self, model_id: str, tokenizer, model, device: str = "cpu", max_new_tokens: int = 128,
                 system_message: str = SYSTEM_MESSAGE, source: dict[str, Any] | None = None):
        self.model_id = model_id
        self.source = source or {}
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.system_message = system_message
        self.template = "tokenizer chat template" if getattr(tokenizer, "chat_template", None) else "neural-chat"

    def _inputs(self, prompt: str):
        messages = [{"role": "system", "content": self.system_message}, {"role": "user", "content": prompt}]
        if self.template == "tokenizer chat template":
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True, return_tensors="pt")
        else:
            text = NEURAL_CHAT_FORMAT.format(system=self.system_message, prompt=prompt)
            enc = self.tokenizer(text, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def rewrite(self, prompts: list[str]) -> list[str]:
        """The LM's answer for each prompt; an empty answer keeps the original prompt (and is logged)."""
        import torch

        out = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for prompt in prompts:
            inputs = self._inputs(prompt)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=pad)
            answer = self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            if not answer:
                log.warning("beautify: %s gave an empty answer for %r; keeping the prompt", self.model_id, prompt)
                answer = prompt
            out.append(answer)
        return out

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "system_message": self.system_message, "template": self.template,
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens,
                "dtype": str(self.model.dtype).replace("torch.", ""),
                "random_weights": self.model_id == TINY_MODEL, "source": self.source}


def build_tiny_lm(folder: Path) -> None:
    """A 2-layer Llama with seeded random weights and a tokenizer trained locally, saved with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from k3eval.generators.tiny import build_tokenizer

    tok = build_tokenizer(512, bos=True)
    tok.chat_template = _TINY_TEMPLATE
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)


def split_revision(spec: str) -> tuple[str, str | None]:
    """'ORG/NAME@REVISION' -> (ORG/NAME, REVISION); a local path or a bare id keeps revision None (main)."""
    if "@" in spec and not Path(spec).exists():
        model, _, revision = spec.rpartition("@")
        if model and revision:
            return model, revision
    return spec, None


def load_beautifier(model_id: str = DEFAULT_MODEL, device: str = "cpu", dtype: str | None = None,
                    max_new_tokens: int | None = None) -> Beautifier:
    """Load a causal LM (hub id, optionally `@REVISION`, or local folder; `tiny-lm` for the offline one) as a
    Beautifier.

    dtype: fp32/fp16/bf16; default bf16 on CUDA, fp32 on the CPU. max_new_tokens: default 128 (16 for tiny-lm)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from k3eval.generators.base import check_dtype, torch_dtype
    from k3eval.generators.diffusers_pipeline import quiet_hub_logging, transformers_dtype_kwarg
    from k3eval.generators.hub import download_hint, source_record

    quiet_hub_logging()
    model_id, revision = split_revision(model_id)
    source = model_id
    if model_id == TINY_MODEL:
        from k3eval.generators.tiny import tiny_folder

        source = str(tiny_folder(TINY_MODEL, build_tiny_lm))
    name = check_dtype(dtype) or ("bf16" if device.startswith("cuda") else "fp32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision,
                                                     **{transformers_dtype_kwarg(): torch_dtype(name)})
        model = model.to(device).eval()
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--beautify: cannot load the language model '{model_id}' ({first}). Offline, download it on "
                        f"a machine with access ({download_hint(model_id, revision=revision)}) into the Hugging Face "
                        "cache, or pass a local folder: --beautify /path/to/model") from None
    if max_new_tokens is None:
        max_new_tokens = 16 if model_id == TINY_MODEL else 128
    return Beautifier(model_id, tokenizer, model, device=device, max_new_tokens=max_new_tokens,
                      source=source_record("beautifier", source, revision, "config.json"))
