"""VQAScore (Lin et al., ECCV 2024): the probability that a vision-language model answers "Yes" when asked whether
the image shows the prompt.

Scoring rule (the paper, and `linzhiqiu/t2v_metrics`, PyPI `t2v-metrics`): the question
`Does this figure show "{prompt}"? Please answer yes or no.` (the paper's template; `--set vqascore.question=...`
takes another, with `{}` where the prompt goes), the answer `Yes`, and the score P(answer | image, question), 0-1:
for an answer of several tokens the geometric mean of their probabilities, teacher-forced (t2v-metrics'
`geometric_mean_prob`). For transformers chat models t2v-metrics (`vqascore_models/qwen2vl_model.py`) puts the
question as the user turn with the image through the model's chat template with the generation prompt, and reads
the answer token's softmax probability from `generate(max_new_tokens=1, do_sample=False, output_scores=True)`. Those
scores have passed the model's generation-config logits processors: for Qwen2.5-VL-Instruct a repetition penalty of
1.05 on every token of the prompt. k3eval computes the same from one forward pass over a left-padded batch and applies
the generation config's `repetition_penalty` the way transformers' `RepetitionPenaltyLogitsProcessor` does, to the
tokens of each row's own input (padding excluded); `--set vqascore.repetition_penalty=1.0` gives the raw model
probability instead. Other generation-config processors are not applied (none is set for the supported models in
greedy decoding). The package's own Qwen question has changed between versions ('Does this image show "{}"?' in
3.0 on PyPI, 'Does this figure show "{}"? Please answer Yes or No.' in 3.1): pass it to reproduce those numbers.

Any transformers image-text-to-text model with a chat template works (`--set vqascore.model=ID_OR_FOLDER`). The
default, `Qwen/Qwen2.5-VL-7B-Instruct` (`qwen2.5-vl-7b` in t2v-metrics), is the largest model of the family the
package supports that fits in 24 GB in bfloat16 (8.3 B parameters, about 17 GB of weights, plus activations of a
batch of 1024 px images); the paper's best model, CLIP-FlanT5, is not a transformers model. Images go through the
model's own processor at their size (t2v-metrics first resizes them with qwen-vl-utils' PIL `smart_resize`, which
yields the same grid; the two resamplers differ in the last digits).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from k3eval.errors import UserError
from k3eval.metrics.api import (
    ImageTextExtractor,
    MetricResult,
    Need,
    PerImageMetric,
    ScoreContext,
    ScoreData,
    weights_warning,
)
from k3eval.metrics.preference import package_version, required_prompt, weights_label
from k3eval.metrics.weights import SYNTHETIC, SYNTHETIC_VERSION, weights_dir

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
DTYPES = ("auto", "float32", "bfloat16", "float16")


class VqaSettings(BaseModel):
    """`model`: a transformers image-text-to-text model (hub id or folder) or `synthetic`; `question` (with `{}` where
    the prompt goes) and `answer`; `dtype` (auto: bfloat16 on CUDA, float32 on CPU); `repetition_penalty` (None: the
    model's generation config, as t2v-metrics' generate() applies it; 1.0: the raw probability)."""

    model_config = ConfigDict(extra="forbid")
    model: str = DEFAULT_MODEL
    question: str = QUESTION
    answer: str = ANSWER
    dtype: str = "auto"
    repetition_penalty: float | None = None

    @field_validator("question")
    @classmethod
    def _one_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError("must contain '{}' exactly once (where the prompt goes)")
        return v

    @field_validator("answer")
    @classmethod
    def _answer(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return v

    @field_validator("repetition_penalty")
    @classmethod
    def _penalty(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be positive (1.0: no penalty)")
        return v


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def check_vlm_folder(folder: Path, label: str) -> dict[str, Any]:
    """The folder's config when it is an image-text-to-text model with a chat template; a UserError otherwise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = _read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        arch = ", ".join(config.get("architectures") or []) or "unknown architecture"
        raise UserError(f"--set vqascore.model: {label} is a {kind or 'model without a model_type'} model ({arch}), "
                        "not an image-text-to-text model: VQAScore asks a vision-language model that transformers "
                        "loads with AutoModelForImageTextToText a yes/no question (e.g. " + DEFAULT_MODEL + ")")
    has_template = any(folder.glob("chat_template*")) or any(
        "chat_template" in _read_json(folder / f) for f in ("tokenizer_config.json", "processor_config.json"))
    if not has_template:
        raise UserError(f"--set vqascore.model: {label} has no chat template (a base or captioning model); VQAScore "
                        "needs an instruction-tuned chat model to ask its question")
    return config


def repetition_penalty(logits, context, mask, penalty: float):
    """transformers' RepetitionPenaltyLogitsProcessor on each row's own tokens (positions where `mask` is 1): a
    positive logit of a token present is divided by the penalty, a negative one multiplied."""
    import torch

    vocab = logits.shape[-1]
    # padding (and ids beyond the output vocabulary) go to an extra column that is dropped
    ids = torch.where(mask.bool() & (context < vocab), context, torch.full_like(context, vocab))
    present = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    present = present.scatter_(1, ids, True)[:, :vocab]
    scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(present, scaled, logits)


class VqaExtractor(ImageTextExtractor):
    """P(answer | image, question) of one VLM, per (image, prompt)."""

    def __init__(self, model: str, question: str, answer: str, dtype: str, penalty: float | None,
                 device: str = "cpu", batch_size: int = 32):
        from k3eval.metrics.hub import folder_sha256, hub_folder

        synthetic = model == SYNTHETIC
        self.folder = synthetic_vlm() if synthetic else hub_folder(model, "--set vqascore.model")
        label = SYNTHETIC if synthetic else weights_label(model, model)
        self.config = check_vlm_folder(self.folder, repr(model))
        gen = _read_json(self.folder / "generation_config.json")
        self.penalty = float(penalty if penalty is not None else gen.get("repetition_penalty") or 1.0)
        self.dtype = ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype
        self.question, self.answer = question, answer
        self.device = device
        self.batch_size = batch_size
        self._fp = {"extractor": "VQAScore P(answer)", "model": label, "model_type": self.config.get("model_type"),
                    "sha256": folder_sha256(self.folder), "question": question, "answer": answer,
                    "repetition_penalty": self.penalty, "dtype": self.dtype,
                    "score": "geometric mean of the answer tokens' probabilities, teacher-forced",
                    "resize": "the model's image processor", "transformers": package_version("transformers"),
                    "synthetic_weights": synthetic}
        self._model = self._processor = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def processor(self):
        with self._lock:
            if self._processor is None:
                from transformers import AutoProcessor

                proc = AutoProcessor.from_pretrained(self.folder)
                proc.tokenizer.padding_side = "left"  # the answer is appended after each row's last token
                self._processor = proc
        return self._processor

    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForImageTextToText

            net = AutoModelForImageTextToText.from_pretrained(self.folder, dtype=getattr(torch, self.dtype))
            self._model = net.to(self.device).eval()
        return self._model

    def prepare(self, image: np.ndarray, text: str):
        from PIL import Image

        return Image.fromarray(image), self.question.format(text)

    def run(self, batch: list) -> np.ndarray:
        import inspect

        import torch

        proc, model = self.processor(), self.model()
        chats = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": q}]}],
                                          tokenize=False, add_generation_prompt=True) for _, q in batch]
        inputs = proc(text=chats, images=[im for im, _ in batch], padding=True, return_tensors="pt")
        answer = proc.tokenizer.encode(self.answer, add_special_tokens=False)
        limit = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
        if limit and inputs["input_ids"].shape[1] + len(answer) > limit:
            raise UserError(f"vqascore: a question with its image takes {inputs['input_ids'].shape[1]} tokens, more "
                            f"than {model.name_or_path}'s limit of {limit}; shorten the prompt or the question")
        n = len(answer)
        ans = torch.tensor(answer, dtype=inputs["input_ids"].dtype).expand(len(batch), n)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ans], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(ans)], 1)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ans)], 1)
        kwargs = {"logits_to_keep": n + 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            logits = model(**inputs, **kwargs).logits[:, -(n + 1):-1].float()
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        total = ids.shape[1]
        logp = torch.zeros(len(batch), dtype=torch.float64, device=logits.device)
        for j in range(n):
            step = logits[:, j]
            if self.penalty != 1.0:  # the context of answer token j: the input and the answer tokens before it
                end = total - n + j
                step = repetition_penalty(step, ids[:, :end], mask[:, :end], self.penalty)
            logp += torch.log_softmax(step.double(), -1)[:, answer[j]]
        return (logp / n).exp().cpu().numpy()[:, None].astype(np.float32)


class VqaScore(PerImageMetric):
    name = "vqascore"
    display_name = "VQAScore"
    higher_is_better = True
    unit = "0-1"
    Settings = VqaSettings

    def needs(self, ctx: ScoreContext) -> dict[str, Need]:
        s, o = self.settings, ctx.opts
        ext = ctx.shared(VqaExtractor, s.model, s.question, s.answer, s.dtype, s.repetition_penalty, o.device,
                         o.batch_size)
        return {"p": Need(ext, text=required_prompt, desc="VQAScore")}

    def per_image_scores(self, data: ScoreData) -> tuple[np.ndarray, MetricResult]:
        ext: VqaExtractor = data.extractors["p"]
        scores = np.asarray(data["p"], np.float64)[:, 0]
        proto = {**ext.fingerprint, "formula": "P(answer | image, question) from the model's next-token softmax",
                 "n": data.n, "seed": data.opts.seed}
        return scores, MetricResult(proto, warnings=weights_warning(ext.fingerprint, "VQAScore"))


# ---- synthetic weights ---------------------------------------------------------------------------------------------
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
# Qwen2.5-VL's chat template in miniature: default system turn, image placeholder, generation prompt
_TEMPLATE = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
             "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
             "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
             "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
             "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
             "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _calibrate_yes(model, proc, yes: int, seed: int) -> None:
    """Random weights give every input nearly the same last hidden state and P(Yes) near 1 / vocabulary size. Point the
    answer token's output row along the mean state (its logit then matches the others' log-sum-exp, P about 0.5) plus
    the direction in which states of different inputs differ most (one logit unit per standard deviation), so that
    synthetic VQAScores spread over 0.2-0.8 and depend on the image and the prompt."""
    import torch
    from PIL import Image

    rs = np.random.RandomState(seed)
    pics = [Image.fromarray((rs.rand(64, 64, 3) * 255).astype(np.uint8)) for _ in range(8)]
    words = ["a cat", "a red car", "two dogs", "a blue house", "the sky", "a tree", "a flower", "many birds"]
    chats = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                    {"type": "text", "text": QUESTION.format(w)}]}],
                                      tokenize=False, add_generation_prompt=True) for w in words]
    proc.tokenizer.padding_side = "left"
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # spread the other logits too
        out = model(**proc(text=chats, images=pics, padding=True, return_tensors="pt"), output_hidden_states=True)
        h = out.hidden_states[-1][:, -1]
        centred = h - h.mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        direction = direction / (centred @ direction).std()
        others = out.logits[:, -1].clone()
        others[:, yes] = float("-inf")
        mean = h.mean(0)
        model.lm_head.weight[yes] = torch.logsumexp(others, -1).mean() * mean / mean.dot(mean) + direction


def synthetic_vlm(seed: int = 0) -> Path:
    """A small Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration and Qwen2_5_VLProcessor) with seeded
    weights, a byte-level BPE tokenizer trained on a few sentences, a Qwen-style chat template and a generation config
    with Qwen2.5-VL-Instruct's repetition penalty, saved with save_pretrained."""

    folder = weights_dir() / f"synthetic-vlm-{SYNTHETIC_VERSION}-seed{seed}"
    if (folder / ".complete").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from k3eval.utils import build_once

    def build(tmp: Path) -> None:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        corpus = [QUESTION.format("a photo of a cat on a table"), "You are a helpful assistant.",
                  "user assistant system Yes No yes no red green blue dog bird car house tree flower"]
        bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=_SPECIAL,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      model_max_length=4096)
        ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIAL}
        images = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
        proc = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                   chat_template=_TEMPLATE)
        proc.save_pretrained(tmp)
        config = Qwen2_5_VLConfig(
            text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                         "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                         "pad_token_id": ids["<|endoftext|>"]},
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "out_hidden_size": 32, "fullatt_block_indexes": [1], "window_size": 56},
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
            _calibrate_yes(model, proc, tok.encode(ANSWER, add_special_tokens=False)[0], seed)
        model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                                   pad_token_id=ids["<|endoftext|>"], repetition_penalty=1.05)
        model.save_pretrained(tmp)

    build_once(folder, weights_dir() / ".vlm.lock", build)
    return folder
