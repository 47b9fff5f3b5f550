"""One tiny interface every eval runs on: `generate(chats, params) -> texts` and
`score_many([(chat, continuations)]) -> log-probs`.

Backends: the JAX sampler (an Orbax checkpoint or an in-memory model), transformers on
an exported Hugging Face directory, and vLLM on a GPU when it is importable. Evals only
ever see chats (lists of {"role", "content"}); turning a chat into the model's prompt
text is `Codec.render`, made by `template_renderer` (the project's chat templates in
data_pipeline.chat_templates) or by a HF directory's own template, so every backend
renders the same prompt for the same model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from msm_jax.errors import UserError
from msm_jax.sampling import SamplingParams
from msm_jax.sharding import MeshConfig

Chat = list[dict[str, str]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """Which model answers. `path` is an Orbax run/checkpoint dir (jax) or a HF dir."""

    kind: Literal["jax", "transformers", "vllm"] = "jax"
    path: str = ""
    tokenizer: Optional[str] = None  # jax: tokenizer file/dir (default: from the checkpoint meta)
    chat_template: Optional[str] = None  # llama3|llama3.1|qwen2.5|qwen3|plain (default: the model's own / by family)
    # qwen3 only: False writes the empty <think></think> block that no-CoT training saw, so
    # the model answers at once; True lets a CoT model think first.
    enable_thinking: bool = False
    step: Optional[int] = None       # jax: checkpoint step (default: latest)
    batch_size: int = 8
    mesh: MeshConfig = MeshConfig()
    device: str = "cpu"              # transformers: torch device
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path is required (a checkpoint dir or a Hugging Face dir)")
        if self.batch_size <= 0:
            raise ValueError("batch_size must be positive")


@dataclasses.dataclass(frozen=True)
class Codec:
    """Text <-> ids and chat -> prompt text for one model's tokenizer."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    render: Callable[[Chat], str]
    eos_ids: tuple[int, ...]
    pad_id: int = 0


def plain_render(chat: Chat) -> str:
    """The prompt format of models without a chat template (tiny test models)."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in chat]
    return "\n\n".join(parts) + "\n\nAssistant:"


# End-of-turn tokens per chat-template family: generation stops at any of them.
END_OF_TURN = {"llama3": ("<|eot_id|>", "<|end_of_text|>"), "llama3.1": ("<|eot_id|>", "<|end_of_text|>"),
               "qwen2.5": ("<|im_end|>", "<|endoftext|>"), "qwen3": ("<|im_end|>", "<|endoftext|>"),
               "plain": ("</s>", "<|endoftext|>", "<|end_of_text|>")}
TEMPLATE_BY_HF_TYPE = {"llama": "llama3.1", "qwen2": "qwen2.5", "qwen3": "qwen3"}


def template_renderer(template: str, thinking: bool = False) -> Callable[[Chat], str]:
    """Chat -> prompt text with a data_pipeline.chat_templates template (or "plain")."""
    if template not in END_OF_TURN:
        raise UserError(f"unknown chat template {template!r} (choose from {', '.join(END_OF_TURN)})")
    if template == "plain":
        return plain_render
    from data_pipeline.chat_templates import ChatConfig, Message, generation_prompt
    chat_cfg = ChatConfig(template=template)

    def render(chat: Chat) -> str:
        return generation_prompt([Message(role=m["role"], content=m["content"]) for m in chat], chat_cfg,
                                 enable_thinking=thinking)
    return render


def make_codec(encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
               token_to_id: Callable[[str], Optional[int]], template: str,
               render: Optional[Callable[[Chat], str]] = None, thinking: bool = False) -> Codec:
    renderer = render or template_renderer(template, thinking)
    eos_ids = tuple(i for i in (token_to_id(n) for n in END_OF_TURN[template]) if i is not None)
    pad = next((i for i in (token_to_id(n) for n in ("<pad>", "<|endoftext|>")) if i is not None), 0)
    return Codec(encode=encode, decode=decode, render=renderer, eos_ids=eos_ids, pad_id=pad)


def load_codec(tokenizer_path: str | Path, template: str, thinking: bool = False) -> Codec:
    """The project tokenizer at `tokenizer_path` with chat template `template` (a
    data_pipeline.chat_templates name, or "plain" for models trained without one)."""
    from data_pipeline.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer_path)
    return make_codec(tok.encode, tok.decode, tok.token_to_id, template, thinking=thinking)


def hf_dir_codec(path: str | Path, template: Optional[str] = None, thinking: bool = False) -> Codec:
    """The codec of an exported/hub HF directory. With no `template` given and a chat
    template shipped in the directory, transformers renders it; otherwise the project's
    tokenizer and template for the model family are used, exactly as the JAX backend does
    (the project templates equal the HF ones for the supported families)."""
    path = Path(path)
    model_type = _hf_model_type(path)
    tok_cfg = path / "tokenizer_config.json"
    try:
        shipped = (path / "chat_template.jinja").is_file() or (
            tok_cfg.is_file() and "chat_template" in json.loads(tok_cfg.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{tok_cfg}: invalid JSON ({e.msg})") from None
    family_template = TEMPLATE_BY_HF_TYPE.get(model_type, "plain")
    if template is not None or not shipped:
        return load_codec(path, template or family_template, thinking)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))

    def render(chat: Chat) -> str:
        return tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)

    codec = make_codec(lambda text: tok.encode(text, add_special_tokens=False),
                       lambda ids: tok.decode(ids, skip_special_tokens=False),
                       tok.get_vocab().get, family_template, render)
    if tok.eos_token_id is not None and tok.eos_token_id not in codec.eos_ids:
        codec = dataclasses.replace(codec, eos_ids=codec.eos_ids + (tok.eos_token_id,))
    return codec


class Backend:
    """Shared helpers; subclasses implement `generate` and `score_many`."""

    name = "backend"

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[str]:
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[Chat, Sequence[str]]]) -> list[list[float]]:
        """Sum of token log-probs of each continuation after its chat's prompt."""
        raise NotImplementedError

    def score(self, chat: Chat, continuations: Sequence[str]) -> list[float]:
        return self.score_many([(chat, continuations)])[0]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    hits = [text.find(s) for s in stops if s and s in text]
    return text[:min(hits)] if hits else text


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, model: Any, codec: Codec, *, mesh: Any = None, batch_size: int = 8):
        from msm_jax.sampling import Sampler
        self.codec = codec
        self.batch_size = batch_size
        self.sampler = Sampler(model, mesh=mesh, pad_id=codec.pad_id)

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> "JaxBackend":
        from data_pipeline.chat_templates import DEFAULT_TEMPLATE
        from msm_jax.checkpoint import load_model
        from msm_jax.sharding import make_mesh
        mesh = make_mesh(cfg.mesh)
        model, meta = load_model(cfg.path, mesh=mesh, step=cfg.step)
        tokenizer = cfg.tokenizer or meta.get("tokenizer")
        if not tokenizer:
            raise UserError(f"{cfg.path}: the checkpoint does not name its tokenizer; set backend.tokenizer")
        template = cfg.chat_template or meta.get("chat_template") or DEFAULT_TEMPLATE[model.cfg.family]
        return cls(model, load_codec(tokenizer, template, cfg.enable_thinking), mesh=mesh,
                   batch_size=cfg.batch_size)

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[str]:
        prompts = [self.codec.encode(self.codec.render(c)) for c in chats]
        gens = self.sampler.generate(prompts, params, eos_ids=self.codec.eos_ids,
                                     detokenize=self.codec.decode, batch_size=self.batch_size)
        return [g.text for g in gens]

    def score_many(self, items: Sequence[tuple[Chat, Sequence[str]]]) -> list[list[float]]:
        prompts, conts, sizes = [], [], []
        for chat, options in items:
            p = self.codec.encode(self.codec.render(chat))
            for o in options:
                prompts.append(p)
                conts.append(self.codec.encode(o))
            sizes.append(len(options))
        flat = [float(x.sum()) for x in self.sampler.score(prompts, conts, batch_size=self.batch_size)]
        return _split(flat, sizes)


def _split(flat: list[float], sizes: list[int]) -> list[list[float]]:
    out, i = [], 0
    for n in sizes:
        out.append(flat[i:i + n])
        i += n
    return out


class TransformersBackend(Backend):
    """An exported HF directory through transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 chat_template: Optional[str] = None, enable_thinking: bool = False):
        import torch
        from transformers import AutoModelForCausalLM
        self.torch = torch
        self.codec = hf_dir_codec(path, chat_template, enable_thinking)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> "TransformersBackend":
        return cls(cfg.path, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                   chat_template=cfg.chat_template, enable_thinking=cfg.enable_thinking)

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[str]:
        torch = self.torch
        torch.manual_seed(params.seed)
        texts: list[str] = []
        for start in range(0, len(chats), self.batch_size):
            prompts = [self.codec.encode(self.codec.render(c)) for c in chats[start:start + self.batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[self.codec.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
            sample = params.temperature > 0
            kwargs = dict(do_sample=sample, max_new_tokens=params.max_tokens, pad_token_id=self.codec.pad_id,
                          eos_token_id=list(self.codec.eos_ids) or None)
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in out[:, width:].tolist():
                row = _until_eos(row, self.codec.eos_ids)
                texts.append(cut_at_stop(self.codec.decode(row), params.stop))
        return texts

    def score_many(self, items: Sequence[tuple[Chat, Sequence[str]]]) -> list[list[float]]:
        torch = self.torch
        rows, sizes = [], []
        for chat, options in items:
            p = self.codec.encode(self.codec.render(chat))
            rows += [(p, self.codec.encode(o)) for o in options]
            sizes.append(len(options))
        flat: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            width = max(len(p) + len(c) for p, c in batch)
            ids = torch.tensor([p + c + [self.codec.pad_id] * (width - len(p) - len(c)) for p, c in batch],
                               device=self.device)
            mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in batch],
                                device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            flat += [float(logp[i, len(p) - 1:len(p) + len(c) - 1].sum()) for i, (p, c) in enumerate(batch)]
        return _split(flat, sizes)


def _hf_model_type(path: str) -> str:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise UserError(f"{path}: not a Hugging Face model dir (no config.json); export one with `msm convert`")
    try:
        return json.loads(config.read_text()).get("model_type", "")
    except json.JSONDecodeError as e:
        raise UserError(f"{config}: invalid JSON ({e.msg})") from None


def _until_eos(row: list[int], eos_ids: Sequence[int]) -> list[int]:
    for j, t in enumerate(row):
        if t in eos_ids:
            return row[:j]
    return row


class VllmBackend(Backend):
    """vLLM on a GPU, for exported HF directories; only when vllm is installed."""

    name = "vllm"

    def __init__(self, path: str, *, dtype: str = "bfloat16", chat_template: Optional[str] = None,
                 enable_thinking: bool = False):
        self.codec = hf_dir_codec(path, chat_template, enable_thinking)
        try:
            import vllm
        except ImportError:
            raise UserError("backend.kind=vllm needs the vllm package (GPU machines); "
                            "use backend.kind=transformers elsewhere") from None
        self.vllm = vllm
        # prompts go in as token ids from our codec, so vLLM needs no tokenizer of its own
        self.llm = vllm.LLM(model=path, dtype=dtype, skip_tokenizer_init=True)

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> "VllmBackend":
        return cls(cfg.path, dtype=cfg.dtype, chat_template=cfg.chat_template, enable_thinking=cfg.enable_thinking)

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[str]:
        # one seed per request: a shared seed would give identical samples of identical prompts
        sps = [self.vllm.SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                        top_k=params.top_k or -1, max_tokens=params.max_tokens,
                                        stop_token_ids=list(self.codec.eos_ids), seed=params.seed + i,
                                        detokenize=False) for i in range(len(chats))]
        prompts = [{"prompt_token_ids": self.codec.encode(self.codec.render(c))} for c in chats]
        outs = self.llm.generate(prompts, sps)
        return [cut_at_stop(self.codec.decode(_until_eos(list(o.outputs[0].token_ids), self.codec.eos_ids)),
                            params.stop) for o in outs]

    def score_many(self, items: Sequence[tuple[Chat, Sequence[str]]]) -> list[list[float]]:
        sp = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0, detokenize=False)
        rows, spans, sizes = [], [], []
        for chat, options in items:
            p = self.codec.encode(self.codec.render(chat))
            for o in options:
                c = self.codec.encode(o)
                rows.append({"prompt_token_ids": p + c})
                spans.append((len(p), p + c))
            sizes.append(len(options))
        flat = []
        for out, (start, ids) in zip(self.llm.generate(rows, sp), spans):
            # prompt_logprobs[j] maps token id -> Logprob for position j (None at j=0)
            flat.append(sum(out.prompt_logprobs[j][ids[j]].logprob for j in range(start, len(ids))))
        return _split(flat, sizes)


def make_backend(cfg: BackendConfig) -> Backend:
    kinds = {"jax": JaxBackend, "transformers": TransformersBackend, "vllm": VllmBackend}
    return kinds[cfg.kind].from_config(cfg)

