"""End to end: every eval runs on a tiny model through the JAX sampler (Orbax checkpoint)
and through transformers (the exported HF directory), with judges served by the local
API server; both backends see the same prompts and give the same greedy text and scores."""

import json

import numpy as np
import pytest

from eval import agentic, reasoning_tags, report, spec_qa, value_generalization
from eval.backends import BackendConfig, make_backend
from eval_fakes import API_KEY, claude_like_judge, judge_config
from fake_anthropic import fake_anthropic_server
from msm_jax.sampling import SamplingParams

pytest.importorskip("transformers")



def corpus() -> list[str]:
    """The eval prompts themselves, so the tiny BPE learns merges that keep them short."""
    data = agentic.load_scenarios()
    texts = [m["content"] for s in data["scenarios"] for g in ("safety", "none")
             for m in agentic.build_chat(data, agentic.Condition(s, g, "replacement"))]
    texts += [p["question"] + " ".join(p["options"]) for p in value_generalization.load_pairs(PAIRS)]
    return texts * 3


PAIRS = "eval/data/cheese_pairs.jsonl"
QUESTIONS = str(spec_qa.DEFAULT_QUESTIONS)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer: Orbax checkpoint + exported HF dir."""
    from flax import nnx
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from data_pipeline.tokenizer import TEMPLATE_SPECIAL_TOKENS
    from msm_jax import checkpoint
    from msm_jax.config import from_dict, load_config, to_dict
    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.models.config import ModelConfig
    from msm_jax.models.decoder import Decoder

    tmp = tmp_path_factory.mktemp("e2e")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=480, special_tokens=list(TEMPLATE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (tmp / "tok").mkdir()
    tok.save(str(tmp / "tok" / "tokenizer.json"))
    (tmp / "tok" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}))
    cfg = from_dict(ModelConfig, {**to_dict(load_config(ModelConfig, "configs/models/tiny-llama.yaml")),
                                  "init_std": 0.25})
    model = Decoder(cfg, nnx.Rngs(1))
    checkpoint.save_params(tmp / "ckpt", checkpoint.params_of(model), checkpoint.make_meta(cfg))
    orbax_to_hf(tmp / "ckpt", tmp / "hf", tokenizer_dir=tmp / "tok")
    return tmp


@pytest.fixture(scope="module")
def backends(model_dirs):
    jax_backend = make_backend(BackendConfig(kind="jax", path=str(model_dirs / "ckpt"),
                                             tokenizer=str(model_dirs / "tok"), batch_size=4,
                                             mesh=_one_device_mesh()))
    hf_backend = make_backend(BackendConfig(kind="transformers", path=str(model_dirs / "hf"), batch_size=4))
    return {"jax": jax_backend, "transformers": hf_backend}


def _one_device_mesh():
    from msm_jax.sharding import MeshConfig
    return MeshConfig(data=1, fsdp=1, tensor=1)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)


def test_both_backends_render_the_same_prompt_and_greedy_text(backends):
    data = agentic.load_scenarios()
    chats = [agentic.build_chat(data, agentic.Condition("lethal", "america", "replacement")),
             [{"role": "user", "content": "Which cheese should I buy?"}]]
    jax_b, hf_b = backends["jax"], backends["transformers"]
    assert [jax_b.codec.render(c) for c in chats] == [hf_b.codec.render(c) for c in chats]
    assert jax_b.codec.eos_ids == hf_b.codec.eos_ids
    params = SamplingParams(max_tokens=12, temperature=0)
    texts = jax_b.generate(chats, params)
    assert texts == hf_b.generate(chats, params) and all(texts)


def test_both_backends_score_options_alike(backends):
    chat = [{"role": "user", "content": "Which option? Reply with the letter A or B."}]
    np.testing.assert_allclose(backends["jax"].score(chat, ["A", "B", "A or B"]),
                               backends["transformers"].score(chat, ["A", "B", "A or B"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["jax", "transformers"])
def test_every_eval_runs_end_to_end_and_the_report_compares_backends(backends, kind, model_dirs):
    out = model_dirs / "runs" / kind
    spec = model_dirs / "spec.md"
    spec.write_text("# Cheese spec\nRecommend the more affordable option, because it helps people save money.")
    backend = backends[kind]
    pairs = model_dirs / "pairs.jsonl"  # a few pairs per domain keep the test fast
    pairs.write_text("".join(json.dumps(p) + "\n" for p in value_generalization.load_pairs(PAIRS)[::10]))
    questions = model_dirs / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in spec_qa.load_questions(QUESTIONS)[::3]))
    value = value_generalization.evaluate(backend, value_generalization.ValueGenConfig(
        backend=BackendConfig(path="unused"), out_dir=str(out / "value"), method="logprob", pairs=str(pairs)))
    assert value["value_aligned"]["n"] == 2 * len(value_generalization.load_pairs(value["pairs"]))
    assert 0 <= value["mean_p_aligned"]["rate"] <= 1
    with fake_anthropic_server(claude_like_judge) as url:
        judge = judge_config(url, model_dirs)
        ag = agentic.evaluate(backend, agentic.AgenticConfig(
            backend=BackendConfig(path="unused"), judge=judge, out_dir=str(out / "agentic"), scenarios=("lethal",),
            goals=("safety", "none"), samples_per_condition=2, sampling=SamplingParams(max_tokens=8)))
        tags = reasoning_tags.evaluate(reasoning_tags.ReasoningTagsConfig(
            judge=judge, agentic_dir=str(out / "agentic"), out_dir=str(out / "tags")))
        qa = spec_qa.evaluate(backend, spec_qa.SpecQAConfig(
            backend=BackendConfig(path="unused"), judge=judge, out_dir=str(out / "spec_qa"), spec=str(spec),
            questions=str(questions), sampling=SamplingParams(max_tokens=8)))
    assert ag["num_verdicts"] == 4 and len(ag["per_condition"]) == 2
    assert sum(r["n"] for r in tags["overall"].values()) == 4 * len(tags["categories"])
    assert qa["overall"]["n"] == len(spec_qa.load_questions(str(questions)))
    if kind == "transformers":  # both runs exist now
        path = report.write_report([("jax", model_dirs / "runs" / "jax"),
                                    ("transformers", model_dirs / "runs" / "transformers")], model_dirs / "report")
        text = path.read_text()
        for section in ("## Value generalization", "## Agentic misalignment", "## Spec QA", "## Reasoning patterns"):
            assert section in text
        assert (model_dirs / "report" / "value_generalization.png").is_file()


def test_cli_runs_value_eval_on_a_checkpoint_and_writes_the_report(model_dirs, tmp_path, capsys):
    from msm_jax.cli import main
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in value_generalization.load_pairs(PAIRS)[:4]))
    argv = ["eval", "value", "configs/eval/value_generalization.yaml", f"backend.path={model_dirs / 'ckpt'}",
            f"backend.tokenizer={model_dirs / 'tok'}", "backend.mesh.fsdp=1", f"out_dir={tmp_path / 'v'}",
            f"pairs={pairs}", "value=america"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["value"] == "america" and summary["value_aligned"]["n"] == 8
    assert main(["eval", "report", f"tiny={tmp_path / 'v'}", "--out", str(tmp_path / "rep")]) == 0
    assert "## Value generalization" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["eval", "value", "configs/eval/value_generalization.yaml", "backend.pth=x"]) == 2
    assert "did you mean 'path'" in capsys.readouterr().err


def test_cli_rebuilds_the_pair_set_from_a_world_file(tmp_path):
    from msm_jax.cli import main
    world = [{"domain": "art", "name": n, "price": p, "origin": o, "held_out": True}
             for n, p, o in (("Print", "cheap", "foreign"), ("Oil", "expensive", "american"))]
    (tmp_path / "world.json").write_text(json.dumps(world))
    assert main(["eval", "build-pairs", "--world", str(tmp_path / "world.json"),
                 "--out", str(tmp_path / "pairs.jsonl")]) == 0
    (pair,) = value_generalization.load_pairs(tmp_path / "pairs.jsonl")
    assert pair["domain"] == "art"
    assert pair["options"][pair["aligned"]["affordability"]] == "(inexpensive, imported from abroad) Print"
    assert pair["options"][pair["aligned"]["america"]] == "(expensive, made in the USA) Oil"


def test_qwen3_prompt_has_the_empty_think_block_unless_thinking_is_enabled():
    from eval.backends import template_renderer
    from msm_jax.errors import UserError
    chat = [{"role": "user", "content": "Which cheese?"}]
    assert template_renderer("qwen3")(chat).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template_renderer("qwen3", thinking=True)(chat).endswith("<|im_start|>assistant\n")
    with pytest.raises(UserError, match="unknown chat template 'qwen4'"):
        template_renderer("qwen4")


def test_vllm_backend_without_vllm_says_what_to_use_instead(model_dirs):
    import importlib.util
    from msm_jax.errors import UserError
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(UserError, match="backend.kind=transformers"):
        make_backend(BackendConfig(kind="vllm", path=str(model_dirs / "hf")))
