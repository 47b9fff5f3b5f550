"""The demo's fallback while some pipeline stage commands are missing: something real and
small that exercises the parts that exist (build a tiny model, run a forward pass, and
round-trip it Orbax -> Hugging Face -> Orbax through the `msm convert` command line)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def msm_argv(*args: str) -> list[str]:
    """The command line a user would type as `msm ARGS`, run with this interpreter."""
    return [sys.executable, "-m", "msm_jax.cli", *args]


def run_msm(args: list[str], log: Path) -> None:
    """Run one `msm` command, its output appended to `log`; fail with the log's tail."""
    from msm_jax.errors import UserError

    with open(log, "a") as f:
        f.write(f"$ msm {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run(msm_argv(*args), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise UserError(f"`msm {' '.join(args)}` failed (exit {proc.returncode}); see {log}:\n{tail}")


def run_smoke(out: Path, missing: list[str]) -> Path:
    """Build, run and round-trip a tiny model under `out`; return the report's path."""
    import jax
    import jax.numpy as jnp

    from msm_jax import checkpoint
    from msm_jax.config import CONFIGS_DIR, load_config
    from msm_jax.models.build import build_model
    from msm_jax.models.config import ModelConfig

    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    log.write_text("")
    cfg = load_config(ModelConfig, CONFIGS_DIR / "models" / "tiny-llama.yaml")
    model = build_model(cfg, seed=0)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    logits = np.asarray(model(tokens))
    ckpt, hf_dir, back = out / "tiny-llama-orbax", out / "tiny-llama-hf", out / "tiny-llama-orbax-roundtrip"
    for old in (ckpt, hf_dir, back):  # a re-run starts clean; these are the smoke test's own outputs
        shutil.rmtree(old, ignore_errors=True)
    checkpoint.save_params(ckpt, checkpoint.params_of(model), checkpoint.make_meta(cfg), step=0)
    run_msm(["convert", "orbax-to-hf", str(ckpt), str(hf_dir)], log)
    run_msm(["convert", "hf-to-orbax", str(hf_dir), str(back)], log)
    reloaded, _ = checkpoint.load_model(back)
    diff = float(np.max(np.abs(np.asarray(reloaded(tokens)) - logits)))
    next_token = np.asarray(jnp.argmax(logits[:, -1, : cfg.vocab_size], axis=-1)).tolist()
    lines = [
        "# msm demo (fallback: the full pipeline is not available yet)",
        "",
        f"Missing stage commands: {', '.join(missing)}.",
        "What ran instead:",
        f"1. Built a tiny Llama ({cfg.num_params() / 1e3:.0f}k parameters, {cfg.num_layers} layers, "
        f"vocab {cfg.vocab_size}) from configs/models/tiny-llama.yaml.",
        f"2. Forward pass on 2x16 random tokens: logits {list(logits.shape)}, "
        f"greedy next tokens {next_token}.",
        f"3. Saved it as an Orbax checkpoint: {ckpt}",
        f"4. `msm convert orbax-to-hf` -> {hf_dir}",
        f"5. `msm convert hf-to-orbax` -> {back}",
        f"6. Reloaded the round trip: max |logit difference| = {diff:.3g} (0 means bit-exact).",
        "",
        f"Commands and their output: {log}",
        f"Wall time: {time.time() - start:.1f} s",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if diff > 1e-5:
        from msm_jax.errors import UserError
        raise UserError(f"Orbax -> HF -> Orbax round trip changed the logits by {diff:.3g}; see {report}")
    return report
