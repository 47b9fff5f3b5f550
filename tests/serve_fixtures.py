"""A tiny Llama with a byte-level BPE tokenizer, saved as an Orbax checkpoint and exported to a
HF folder, for the `msm serve` tests; and a server running in this process."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Iterable


def make_model_dirs(tmp: Path, corpus: Iterable[str], *, vocab_size: int = 480, max_len: int = 2048) -> Path:
    """tmp/tok (tokenizer), tmp/ckpt (Orbax, names its tokenizer), tmp/hf (export)."""
    from flax import nnx
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from data_pipeline.tokenizer import TEMPLATE_SPECIAL_TOKENS
    from msm_jax import checkpoint
    from msm_jax.config import from_dict, load_config, to_dict
    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.models.config import ModelConfig
    from msm_jax.models.decoder import Decoder

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(corpus), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(TEMPLATE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (tmp / "tok").mkdir()
    tok.save(str(tmp / "tok" / "tokenizer.json"))
    (tmp / "tok" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}))
    base = to_dict(load_config(ModelConfig, "configs/models/tiny-llama.yaml"))
    cfg = from_dict(ModelConfig, {**base, "vocab_size": vocab_size, "init_std": 0.25,
                                  "max_position_embeddings": max_len})
    model = Decoder(cfg, nnx.Rngs(1))
    checkpoint.save_params(tmp / "ckpt", checkpoint.params_of(model),
                           checkpoint.make_meta(cfg, tokenizer=str(tmp / "tok"), chat_template="llama3.1"))
    orbax_to_hf(tmp / "ckpt", tmp / "hf", tokenizer_dir=tmp / "tok")
    return tmp


@contextlib.contextmanager
def running_server(ckpt: Path, *, name: str = "tiny", window_s: float = 0.01, batch_size: int = 8,
                   default_max_tokens: int = 16):
    """`msm serve`'s engine and HTTP server on a free port, in threads of this process."""
    from msm_jax.serve.engine import Engine, ServeOptions, load_backend
    from msm_jax.serve.http import make_server
    from msm_jax.serve.protocol import Limits

    backend = load_backend(str(ckpt), ServeOptions(batch_size=batch_size, mesh={"data": 1, "fsdp": 1, "tensor": 1}))
    engine = Engine(backend, batch_size=batch_size, window_s=window_s).start()
    server = make_server(engine, Limits(model_name=name, max_len=engine.max_len,
                                       default_max_tokens=default_max_tokens), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        engine.stop()
