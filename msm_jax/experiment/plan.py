"""What an experiment costs before anything runs: per stage the tokens, steps, chats and
samples, API calls and spend (generation and judging), and hours on the named TPU slice.

Every figure comes from the stage's own config (loaded with the overrides `msm run`
passes); the assumptions behind the TPU hours and the judge spend are printed with them.
A training stage whose warmup would not end before the last step its token budget gives
fails the plan (an explicit `train.steps` is taken as meant, e.g. a smoke run).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from msm_jax.config import ConfigError
from msm_jax.errors import UserError

# Published bf16 peak per chip, and TensorCores per chip (v4/v5p slice names count cores).
ACCELERATORS = {"v4": (275e12, 2), "v5p": (459e12, 2), "v5litepod": (197e12, 1), "v5e": (197e12, 1),
                "v6e": (918e12, 1)}
FLOPS_NOTE = "6N + 12·L·S·H·Dh FLOPs per trained token (PaLM, appendix B), 2N per sampled token"
TRAIN_KINDS = ("pretrain", "midtrain", "sft")


class PlanError(ConfigError):
    """The configs describe a run that cannot work as intended (e.g. warmup past the end)."""


def slice_chips(accelerator: str) -> tuple[int, float]:
    """(chips, bf16 peak FLOP/s per chip) of a slice name such as v5p-32."""
    kind, _, cores = accelerator.rpartition("-")
    if kind not in ACCELERATORS or not cores.isdigit():
        raise ValueError(f"unknown accelerator {accelerator!r} (e.g. {', '.join(k + '-8' for k in ACCELERATORS)})")
    peak, cores_per_chip = ACCELERATORS[kind]
    return max(int(cores) // cores_per_chip, 1), peak


@dataclasses.dataclass
class Estimate:
    detail: str = ""  # one line under the stage
    tokens: Optional[int] = None  # shards: tokens; train: tokens trained on
    params: Optional[int] = None  # train: model parameters
    gen_usd: float = 0.0  # API spend of a generation stage
    judge_usd: float = 0.0  # API spend of an eval's judge
    api_calls: int = 0
    tpu_hours: Optional[float] = None
    facts: dict = dataclasses.field(default_factory=dict)  # the figures behind the line (tests, tools)


def _tpu_hours(flops: float, slice_cfg, mfu: float) -> float:
    chips, peak = slice_chips(slice_cfg.accelerator)
    return flops / (chips * peak * mfu) / 3600


def _fmt_hours(hours: Optional[float], slice_cfg, mfu_name: str) -> str:
    if hours is None or slice_cfg is None:
        return ""
    return f"; ~{hours:.2f} TPU h on {slice_cfg.accelerator} at {getattr(slice_cfg, mfu_name):.0%} MFU"


def _load_stage_config(cls, stage):
    from msm_jax.config import load_config
    from msm_jax.experiment.stages import _overrides_after

    return load_config(cls, stage.config, _overrides_after(stage.argv, stage.config))


# -- per kind ------------------------------------------------------------------------------


def generate_estimate(stage) -> Estimate:
    from data_pipeline import aft_chats, msm_docs
    from data_pipeline.generate_cli import flag_overrides
    from msm_jax.cli import build_parser
    from msm_jax.config import load_config

    args = build_parser().parse_args(stage.argv)
    docs = args.what == "docs"
    module, cls = (msm_docs, msm_docs.DocsConfig) if docs else (aft_chats, aft_chats.ChatsConfig)
    cfg = load_config(cls, args.config, list(args.overrides) + flag_overrides(args))
    preview = module.preview(cfg)
    calls = sum(row["calls"] for row in preview["stages"])
    usd = float(preview["est_total_usd"]) if cfg.llm.backend == "anthropic" else 0.0
    if docs:
        what = (f"documents up to {cfg.budget_tokens:,} tokens" if cfg.budget_tokens
                else f"{preview['documents_requested']:,} documents")
    else:
        what = f"{cfg.chats:,} chats (CoT and no-CoT files)"
    price = f"~${usd:,.2f}" if cfg.llm.backend == "anthropic" else f"$0 ({cfg.llm.backend} backend)"
    return Estimate(detail=f"{what}; {calls:,} API calls to {cfg.model_name}, {price}", gen_usd=usd,
                    api_calls=calls, facts={"chats": None if docs else cfg.chats, "model": cfg.model_name})


def shards_estimate(stage) -> Estimate:
    tokens = stage.estimate.get("tokens")
    if tokens is None:
        return Estimate(detail="every token of its inputs (set budget_tokens or expected_tokens to plan steps)")
    kind = "budget" if stage.estimate.get("budget") else "expected"
    return Estimate(detail=f"{tokens:,} tokens ({kind})", tokens=tokens)


def _model_of(stage):
    """The stage's typed model config, or None when its YAML leaves it to the checkpoint."""
    from msm_jax.train.config import RunConfig

    try:
        return _load_stage_config(RunConfig, stage).model
    except ConfigError:
        return None


def train_estimate(stage, shard_tokens: list[Optional[int]], init_kind: Optional[str], slice_cfg) -> Estimate:
    from msm_jax.config import load_tree
    from msm_jax.experiment.stages import _overrides_after

    tree, _ = load_tree(stage.config, _overrides_after(stage.argv, stage.config))
    train, data = tree.get("train") or {}, tree.get("data") or {}
    schedule, lora, init = tree.get("schedule") or {}, tree.get("lora"), tree.get("init") or {}
    seq_len = train["seq_len"]
    per_step = train["global_batch"] * seq_len
    steps, tokens = train.get("steps"), None
    steps_given = steps is not None
    if steps_given:
        tokens = steps * per_step
    elif shard_tokens and all(t is not None for t in shard_tokens):
        tokens = sum(shard_tokens) * (data.get("num_epochs") or 1)
        steps = tokens // per_step
    warmup = schedule.get("warmup_steps", 0)
    if not steps_given and steps is not None and warmup >= steps:  # explicit train.steps: a deliberate short run
        raise PlanError(f"stage {stage.id}: schedule.warmup_steps={warmup} is not below its ~{steps} steps "
                        f"({tokens:,} tokens at {per_step:,} tokens/step): lower the warmup or train.global_batch")
    approx = "" if steps_given else "~"
    parts = [f"{tokens:,} tokens" if tokens is not None else "tokens unknown",
             f"{approx}{steps} steps" if steps is not None else "steps unknown",
             f"{per_step:,} tokens/step", f"warmup {warmup}"]
    adapter = None
    if lora:
        adapter = init.get("adapter", "continue")
        how = "fresh adapter"
        if init_kind in TRAIN_KINDS:
            how = ("continues the upstream LoRA adapter" if adapter == "continue"
                   else "merges the upstream adapter, then a fresh one")
        parts.append(f"LoRA r={lora.get('rank')} ({how})")
    model = _model_of(stage)
    params = model.num_params() if model is not None else None
    hours = None
    if tokens is not None and slice_cfg is not None and model is not None:
        attention = 12 * model.num_layers * seq_len * model.num_heads * model.resolved_head_dim
        hours = _tpu_hours(tokens * (6 * params + attention), slice_cfg, slice_cfg.train_mfu)
    facts = {"steps": steps, "tokens": tokens, "warmup": warmup, "adapter": adapter, "init_kind": init_kind}
    return Estimate(detail=", ".join(parts) + _fmt_hours(hours, slice_cfg, "train_mfu"), tokens=tokens,
                    params=params, tpu_hours=hours, facts=facts)


def agentic_estimate(stage, params: Optional[int], slice_cfg) -> Estimate:
    from data_pipeline.llm.pricing import cost_usd
    from eval.agentic import AgenticConfig, build_chat, grid, load_scenarios
    from eval.judge import load_prompt

    cfg = _load_stage_config(AgenticConfig, stage)
    data = load_scenarios(cfg.scenario_file)
    conditions = grid(cfg, data)
    samples = len(conditions) * cfg.samples_per_condition
    chars = sum(len(m["content"]) for c in conditions for m in build_chat(data, c))
    prompt_tokens = chars // 4 // max(len(conditions), 1)  # ~4 characters per token
    judge_in = len(load_prompt("agentic_judge.md")) // 4 + prompt_tokens + cfg.sampling.max_tokens
    usd = cost_usd(cfg.judge.model_id, samples * judge_in, samples * cfg.judge.max_tokens,
                   batch=cfg.judge.use_batch)
    if cfg.judge.llm.backend != "anthropic":
        usd = 0.0
    hours = None
    if params is not None and slice_cfg is not None:
        hours = _tpu_hours(samples * (prompt_tokens + cfg.sampling.max_tokens) * 2 * params, slice_cfg,
                           slice_cfg.sample_mfu)
    detail = (f"{len(conditions)} conditions ({len(cfg.scenarios)} scenarios x {len(cfg.goals)} goals x urgency "
              f"{'/'.join(cfg.urgencies)}) x {cfg.samples_per_condition} samples = {samples:,} samples, "
              f"temperature {cfg.sampling.temperature:g}, max {cfg.sampling.max_tokens:,} new tokens; "
              f"judge {cfg.judge.model_id}: {samples:,} calls, at most ~${usd:,.2f} (every response and answer "
              f"at its max_tokens){_fmt_hours(hours, slice_cfg, 'sample_mfu')}")
    facts = {"conditions": len(conditions), "samples_per_condition": cfg.samples_per_condition,
             "samples": samples, "temperature": cfg.sampling.temperature,
             "max_tokens": cfg.sampling.max_tokens, "urgencies": list(cfg.urgencies), "judge": cfg.judge.model_id}
    return Estimate(detail=detail, judge_usd=usd, api_calls=samples, tpu_hours=hours, facts=facts)


def value_estimate(stage, params: Optional[int], slice_cfg) -> Estimate:
    from eval.value_generalization import ValueGenConfig, load_pairs, yes_no_questions

    cfg = _load_stage_config(ValueGenConfig, stage)
    try:
        pairs = load_pairs(_resolve(cfg.pairs))
    except UserError as e:
        return Estimate(detail=str(e))
    if cfg.method == "yes_no":
        prompts = len(yes_no_questions(pairs, cfg))
        detail = f"{len(pairs):,} pairs, each option asked alone (yes_no) = {prompts:,} prompts; no API calls"
    else:
        prompts = len(pairs) * 2 * (cfg.samples_per_order if cfg.method == "sample" else 1)
        detail = f"{len(pairs):,} pairs x 2 option orders ({cfg.method}) = {prompts:,} prompts; no API calls"
    return Estimate(detail=detail, facts={"pairs": len(pairs), "value": cfg.value})


def _resolve(path: str) -> str:
    from msm_jax.experiment.stages import resolve_file

    return resolve_file(path)


# -- the whole plan ------------------------------------------------------------------------


def _params_of(stage_id: str, by_id: dict, params: dict) -> Optional[int]:
    """Parameters of the model an eval/export stage reads: its nearest train upstream, else any."""
    todo = [stage_id]
    while todo:
        sid = todo.pop()
        if sid in params:
            return params[sid]
        todo += by_id[sid].deps if sid in by_id else []
    return next(iter(params.values()), None)


def estimate_stages(stages: list, slice_cfg=None) -> dict[str, Estimate]:
    """An Estimate per stage id (stages the configs say nothing about get none)."""
    by_id = {s.id: s for s in stages}
    out: dict[str, Estimate] = {}
    params: dict[str, int] = {}
    for later in (False, True):  # evals last: they need the parameter count of any train stage
        for stage in stages:
            if (stage.kind == "eval") != later:
                continue
            try:
                out[stage.id] = _estimate(stage, by_id, out, params, slice_cfg)
            except PlanError:
                raise
            except Exception as e:  # an estimate only: the plan still prints without it
                out[stage.id] = Estimate(detail=f"no estimate ({type(e).__name__}: {e})")
    return {s.id: out[s.id] for s in stages if out.get(s.id) is not None}


def _estimate(stage, by_id: dict, done: dict, params: dict, slice_cfg) -> Optional[Estimate]:
    if stage.kind == "generate":
        return generate_estimate(stage)
    if stage.kind == "shards":
        return shards_estimate(stage)
    if stage.kind in TRAIN_KINDS:
        shard_tokens = [done[d].tokens if d in done else None for d in stage.deps if d.startswith("shards/")]
        init = next((by_id[d].kind for d in stage.deps if not d.startswith("shards/") and d in by_id), None)
        est = train_estimate(stage, shard_tokens, init, slice_cfg)
        params[stage.id] = est.params
        return est
    if stage.kind == "eval":
        name, n = stage.argv[1], _params_of(stage.id, by_id, params)
        if name == "agentic":
            return agentic_estimate(stage, n, slice_cfg)
        if name == "value":
            return value_estimate(stage, n, slice_cfg)
        return Estimate(detail=f"msm eval {name}: API spend not estimated")
    return None


def totals(stages: list, estimates: dict[str, Estimate], counted: set[str]) -> dict:
    """Spend and TPU hours of the stages in `counted` (those that will run, each folder once)."""
    t = {"generation_usd": 0.0, "judging_usd": 0.0, "api_calls": 0, "tpu_hours": 0.0}
    for stage in stages:
        est = estimates.get(stage.id)
        if est is None or stage.id not in counted:
            continue
        t["generation_usd"] += est.gen_usd
        t["judging_usd"] += est.judge_usd
        t["api_calls"] += est.api_calls
        t["tpu_hours"] += est.tpu_hours or 0.0
    return t


def summary_lines(t: dict, slice_cfg) -> list[str]:
    lines = [f"API ~${t['generation_usd'] + t['judging_usd']:,.2f}: ~{t['api_calls']:,} calls (generation "
             f"~${t['generation_usd']:,.2f}, judging at most ~${t['judging_usd']:,.2f})"]
    if slice_cfg is not None:
        chips, peak = slice_chips(slice_cfg.accelerator)
        lines.append(f"TPU: ~{t['tpu_hours']:.1f} h on {slice_cfg.accelerator} ({chips} chips x "
                     f"{peak / 1e12:.0f} TFLOP/s bf16), assuming {slice_cfg.train_mfu:.0%} MFU for training and "
                     f"{slice_cfg.sample_mfu:.0%} for sampling; {FLOPS_NOTE}")
    else:
        lines.append("TPU: no estimate (set slice.accelerator, e.g. slice.accelerator=v5p-8)")
    return lines
