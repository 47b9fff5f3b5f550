"""`msm convert`: Hugging Face <-> Orbax, with optional logit-parity verification."""

from __future__ import annotations

import argparse

from msm_jax.config import parse_override

EPILOG = """\
examples:
  msm convert hf-to-orbax ./Qwen3-0.6B ./ckpt/qwen3-0.6b --verify
  msm convert orbax-to-hf ./runs/sft ./export/sft --tokenizer ./Qwen3-0.6B --verify
  msm convert lora-to-peft ./runs/sft ./export/sft-adapter --base-model ./export/base

A LoRA run exported with orbax-to-hf has its adapter merged into the base weights;
lora-to-peft writes the adapter alone (adapter_config.json + adapter_model.safetensors).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between Hugging Face directories and Orbax checkpoints",
                       description="Convert models between Hugging Face directories (config.json + "
                                   "safetensors) and msm-jax Orbax checkpoints, tensor by tensor.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    conv = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

    imp = conv.add_parser("hf-to-orbax", help="import a Hugging Face model directory")
    imp.add_argument("hf_dir", help="directory with config.json and model.safetensors (or an index)")
    imp.add_argument("ckpt_dir", help="Orbax checkpoint directory to create (local or gs://)")
    imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="model execution option, e.g. param_dtype=float32, compute_dtype=bfloat16")
    imp.add_argument("--verify", action="store_true", help="compare logits with transformers after import")
    imp.set_defaults(func=_hf_to_orbax)

    exp = conv.add_parser("orbax-to-hf", help="export a checkpoint as a Hugging Face model directory")
    exp.add_argument("ckpt_dir", help="Orbax checkpoint directory (msm train run's checkpoints, or an import)")
    exp.add_argument("hf_dir", help="output directory")
    exp.add_argument("--step", type=int, help="checkpoint step (default: latest complete)")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                     help="tensor dtype in the export (default: the checkpoint's parameter dtype)")
    exp.add_argument("--tokenizer", metavar="DIR", help="copy tokenizer files from this directory")
    exp.add_argument("--max-shard-size", type=float, default=5.0, metavar="GB", help="safetensors shard size")
    exp.add_argument("--lora-base-only", action="store_true",
                     help="for a LoRA run: export the frozen base weights instead of the merged model")
    exp.add_argument("--verify", action="store_true", help="compare logits with transformers after export")
    exp.set_defaults(func=_orbax_to_hf)

    peft = conv.add_parser("lora-to-peft", help="export a LoRA run's adapter as a PEFT adapter directory")
    peft.add_argument("ckpt_dir", help="checkpoint directory of a LoRA training stage")
    peft.add_argument("out_dir", help="output directory (adapter_config.json + adapter_model.safetensors)")
    peft.add_argument("--step", type=int, help="checkpoint step (default: latest complete)")
    peft.add_argument("--base-model", help="base_model_name_or_path to record (e.g. the exported base directory)")
    peft.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    peft.add_argument("--verify", action="store_true",
                      help="load base + adapter with PEFT and compare logits with msm-jax (needs --base-model)")
    peft.set_defaults(func=_lora_to_peft)


def _join_hosts() -> None:
    """A stage started on every host joins one jax.distributed job (no-op in one process)."""
    from msm_jax.distributed import initialize

    initialize()


def _once(name: str, export):
    """Files written once: by the leader, the other processes waiting (a stopgap until the
    export itself spans the hosts)."""
    from msm_jax.distributed import on_leader

    return on_leader(name, export)


def _refuse_multihost_merge(args: argparse.Namespace) -> None:
    """Merging a LoRA run saves through Orbax (a collective), which the leader cannot do alone."""
    import jax

    from msm_jax import checkpoint
    from msm_jax.errors import UserError

    if jax.process_count() == 1 or args.lora_base_only:
        return
    step = checkpoint.latest_step(args.ckpt_dir) if args.step is None else args.step
    if checkpoint.read_meta(args.ckpt_dir, step).get("lora"):
        raise UserError(f"{args.ckpt_dir}: exporting a merged LoRA run on {jax.process_count()} processes is not "
                        "supported yet; export it from one process (`msm convert orbax-to-hf` without a pod)")


def _options(pairs: list[str]) -> dict:
    return dict(parse_override(p) for p in pairs)


def _verify(ckpt_dir: str, hf_dir: str) -> None:
    from msm_jax.hf.verify import transformers_available, verify_parity

    if not transformers_available():
        print("verify: skipped (transformers/torch not installed)")
        return
    diff = verify_parity(ckpt_dir, hf_dir)
    print(f"verify: max |logit difference| msm-jax vs transformers = {diff:.3g} (float32)")


def _hf_to_orbax(args: argparse.Namespace) -> int:
    _join_hosts()
    from msm_jax.hf.import_hf import hf_to_orbax

    cfg = hf_to_orbax(args.hf_dir, args.ckpt_dir, **_options(args.set))
    print(f"imported {cfg.family} model ({cfg.num_params() / 1e6:.2f}M params, {cfg.param_dtype}) "
          f"-> {args.ckpt_dir}")
    if args.verify:
        _verify(args.ckpt_dir, args.hf_dir)
    return 0


def _orbax_to_hf(args: argparse.Namespace) -> int:
    _join_hosts()
    from msm_jax.hf.export_hf import orbax_to_hf

    def export() -> str:
        return str(orbax_to_hf(args.ckpt_dir, args.hf_dir, step=args.step, dtype=args.dtype,
                               tokenizer_dir=args.tokenizer, max_shard_bytes=int(args.max_shard_size * 2**30),
                               merge_lora=not args.lora_base_only))

    _refuse_multihost_merge(args)
    out = _once("export", export)
    print(f"exported {args.ckpt_dir} -> {out}")
    if args.verify and args.lora_base_only:
        print("verify: skipped (--lora-base-only exports the base, not the trained model)")
    elif args.verify:
        _verify(args.ckpt_dir, args.hf_dir)
    return 0


def _lora_to_peft(args: argparse.Namespace) -> int:
    _join_hosts()
    from msm_jax.errors import UserError
    from msm_jax.hf.peft import export_peft_adapter

    out = _once("peft export", lambda: str(export_peft_adapter(args.ckpt_dir, args.out_dir, step=args.step,
                                                               base_model=args.base_model, dtype=args.dtype)))
    print(f"exported the LoRA adapter of {args.ckpt_dir} -> {out}")
    if args.verify:
        if not args.base_model:
            raise UserError("--verify needs --base-model (the HF directory the adapter applies to)")
        from msm_jax.hf.verify import transformers_available, verify_peft_parity

        if not transformers_available():
            print("verify: skipped (transformers/torch not installed)")
            return 0
        diff = verify_peft_parity(args.ckpt_dir, args.base_model, args.out_dir, step=args.step)
        print(f"verify: max |logit difference| msm-jax vs transformers+PEFT = {diff:.3g} (float32)")
    return 0
