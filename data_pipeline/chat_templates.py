"""Chat templates rendered as segments, so the SFT loss mask comes from the template itself.

A template turns a chat into a list of `Segment(text, train)`; the rendered string (the
concatenation) equals what the family's Hugging Face Jinja template renders, and the
ids are the concatenated ids of the segments. `tokenize_chat` checks that these ids
equal tokenizing the whole string; if a tokenizer would merge across a segment border
the mask is undefined and it fails loudly instead of training on the wrong tokens.

Trained segments: each assistant turn's content and its end-of-turn token; reasoning
when `train_on_reasoning`; never the role header / generation prompt before a turn.
Families: `llama3` (Llama 3.0), `llama3.1` (with its date system preamble), `qwen2.5`
(ChatML with the default Qwen system prompt), `qwen3` (ChatML with `<think>` blocks;
reasoning of assistant turns before the last user turn is dropped, as Qwen3 does).
Llama and Qwen2.5 have no reasoning slot: reasoning is written inline as
`<think>\\n...\\n</think>\\n\\n` at the start of the assistant content (content newlines
after it stripped, as Qwen3 does).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import numpy as np

from data_pipeline.packing import Sequence
from data_pipeline.tokenizer import Tokenizer
from msm_jax.errors import UserError

TemplateName = Literal["llama3", "llama3.1", "qwen2.5", "qwen3"]
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
DEFAULT_TEMPLATE = {"llama": "llama3.1", "qwen2": "qwen2.5", "qwen3": "qwen3"}  # ModelConfig.family

# Special tokens that open and close documents in midtraining, per template family.
DOC_BOS = {"llama3": "<|begin_of_text|>", "llama3.1": "<|begin_of_text|>", "qwen2.5": None, "qwen3": None}
DOC_EOS = {"llama3": "<|end_of_text|>", "llama3.1": "<|end_of_text|>", "qwen2.5": "<|endoftext|>",
           "qwen3": "<|endoftext|>"}


class NoExactMask(UserError):
    """This chat cannot be given an exact loss mask under this template and tokenizer."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatConfig:
    template: Optional[TemplateName] = None  # None: the model family's (see DEFAULT_TEMPLATE)
    reasoning: Literal["keep", "drop"] = "keep"  # keep: CoT variant; drop: no-CoT variant
    train_on_reasoning: bool = True  # with reasoning kept: is it a training target?
    date_string: str = "26 Jul 2024"  # llama3.1's template default


@dataclasses.dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str
    reasoning: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    train: bool


def split_inline_reasoning(content: str) -> tuple[str, Optional[str]]:
    """`<think>r</think>c` -> (c, r), with Qwen3's template's whitespace handling."""
    if "</think>" not in content:
        return content, None
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return content.split("</think>")[-1].lstrip("\n"), reasoning


def inline_think(reasoning: str) -> str:
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"


def _assistant_body(msg: Message, cfg: ChatConfig, strip: bool) -> list[Segment]:
    """Inline reasoning + content for templates without a reasoning slot; `strip` applies
    Llama's `| trim` to the whole content."""
    think = inline_think(msg.reasoning) if msg.reasoning else ""
    content = msg.content.lstrip("\n") if think else msg.content
    if strip:
        think, content = think.lstrip(), content.rstrip()
        if not think:
            content = content.lstrip()
    out = [Segment(think, cfg.train_on_reasoning)] if think else []
    return out + [Segment(content, True)]


def render_llama(messages: list[Message], cfg: ChatConfig) -> list[Segment]:
    segs = [Segment("<|begin_of_text|>", False)]
    if cfg.template == "llama3.1":
        system = messages[0].content.strip() if messages[0].role == "system" else ""
        if messages[0].role == "system":
            messages = messages[1:]
        segs.append(Segment("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                            f"Today Date: {cfg.date_string}\n\n{system}<|eot_id|>", False))
    for msg in messages:
        header = f"<|start_header_id|>{msg.role}<|end_header_id|>\n\n"
        if msg.role != "assistant":
            segs.append(Segment(f"{header}{msg.content.strip()}<|eot_id|>", False))
            continue
        segs.append(Segment(header, False))
        segs += _assistant_body(msg, cfg, strip=True)
        segs.append(Segment("<|eot_id|>", True))
    return segs


def render_qwen25(messages: list[Message], cfg: ChatConfig) -> list[Segment]:
    segs = []
    if messages[0].role != "system":
        segs.append(Segment(f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n", False))
    for msg in messages:
        if msg.role != "assistant":
            segs.append(Segment(f"<|im_start|>{msg.role}\n{msg.content}<|im_end|>\n", False))
            continue
        segs.append(Segment("<|im_start|>assistant\n", False))
        segs += _assistant_body(msg, cfg, strip=False)
        segs += [Segment("<|im_end|>", True), Segment("\n", False)]
    return segs


def render_qwen3(messages: list[Message], cfg: ChatConfig) -> list[Segment]:
    last_query = max(i for i, m in enumerate(messages) if m.role == "user")
    segs = []
    for i, msg in enumerate(messages):
        if msg.role != "assistant":
            segs.append(Segment(f"<|im_start|>{msg.role}\n{msg.content}<|im_end|>\n", False))
            continue
        segs.append(Segment("<|im_start|>assistant\n", False))
        reasoning = msg.reasoning or ""
        is_last = i == len(messages) - 1
        if i > last_query and (is_last or reasoning):
            block = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"
            # An empty block is what Qwen3's non-thinking generation prompt writes: a prompt, not a target.
            segs.append(Segment(block, bool(reasoning) and cfg.train_on_reasoning))
            segs.append(Segment(msg.content.lstrip("\n"), True))
        else:
            segs.append(Segment(msg.content, True))
        segs += [Segment("<|im_end|>", True), Segment("\n", False)]
    return segs


RENDERERS = {"llama3": render_llama, "llama3.1": render_llama, "qwen2.5": render_qwen25, "qwen3": render_qwen3}


def render(messages: list[Message], cfg: ChatConfig) -> list[Segment]:
    """Segments of the chat under `cfg` (reasoning kept or dropped first)."""
    if cfg.template not in RENDERERS:
        raise UserError(f"unknown chat template {cfg.template!r}; known: {', '.join(RENDERERS)}")
    if cfg.reasoning == "drop":
        messages = [dataclasses.replace(m, reasoning=None) for m in messages]
    return [s for s in RENDERERS[cfg.template](messages, cfg) if s.text]


def tokenize_chat(messages: list[Message], cfg: ChatConfig, tokenizer: Tokenizer) -> Sequence:
    """Ids and loss mask (1 = training target) of one chat; see the module docstring."""
    segments = render(messages, cfg)
    ids: list[int] = []
    train: list[int] = []
    for seg in segments:
        seg_ids = tokenizer.encode(seg.text)
        ids += seg_ids
        train += [int(seg.train)] * len(seg_ids)
    whole = tokenizer.encode("".join(s.text for s in segments))
    if whole != ids:
        at = next((i for i, (a, b) in enumerate(zip(whole, ids)) if a != b), min(len(whole), len(ids)))
        raise NoExactMask(
            f"chat template {cfg.template!r}: tokenizing by segments differs from tokenizing the whole chat at "
            f"token {at} ({tokenizer.decode(whole[max(0, at - 3):at + 3])!r}); the tokenizer merges across a "
            f"template boundary, so no exact loss mask exists")
    if not any(train):
        raise NoExactMask(f"chat template {cfg.template!r}: the chat has no assistant tokens to train on")
    return Sequence(np.asarray(ids, dtype=np.int32), np.asarray(train, dtype=np.int32))


def generation_prompt(messages: list[Message], cfg: ChatConfig, enable_thinking: bool = True) -> str:
    """The rendered prompt for sampling the next assistant turn (`add_generation_prompt`)."""
    text = "".join(s.text for s in render(messages, cfg))
    if cfg.template.startswith("llama"):
        return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    text += "<|im_start|>assistant\n"
    if cfg.template == "qwen3" and not enable_thinking:
        text += "<think>\n\n</think>\n\n"
    return text
