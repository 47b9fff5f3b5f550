"""`msm generate docs|chats` end to end against the local Messages/Batches API server,
with every gate and fault exercised; the shipped demo corpora regenerate offline."""

import collections
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.aft_chats import ChatJudgeConfig, ChatsConfig, generate_chats
from data_pipeline.llm import AnswerStore, LLMConfig, make_client
from data_pipeline.llm.pricing import cost_usd
from data_pipeline.msm_docs import DocJudgeConfig, DocsConfig, generate_documents
from data_pipeline.prompts import task_of
from fake_anthropic import FakeReply, fake_anthropic_server
from msm_jax.cli import main as msm
from msm_jax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "data_pipeline" / "specs"
_spec = importlib.util.spec_from_file_location("make_demo_corpus", ROOT / "tools" / "make_demo_corpus.py")
author = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(author)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-dummy")


def fake_claude(faults=None, otherwise=None):
    """The template author behind the fake API; `faults[task][i]` replaces the i-th call of
    that task (retries included) with a scripted reply, `otherwise[task]` every other call."""
    faults = faults or {}
    otherwise = otherwise or {}
    calls = collections.Counter()

    def responder(body):
        prompt = body["messages"][-1]["content"]
        task = task_of(prompt)
        i = calls[task]
        calls[task] += 1
        fault = faults.get(task, {}).get(i)
        if fault is not None:
            return fault(body) if callable(fault) else fault
        if task in otherwise:
            return otherwise[task]
        system = "".join(b["text"] for b in body.get("system", []))
        rng = author.random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest())
        return author.author_answer(task, prompt, author.spec_name(system), rng)
    responder.calls = calls
    return responder


def llm(url, tmp_path, **kw):
    return LLMConfig(backend="anthropic", base_url=url, store_dir=str(tmp_path / "store"), retry_backoff_s=0.0,
                     batch_poll_interval_s=0.0, max_concurrency=1, **kw)


def docs_cfg(url, tmp_path, **kw):
    base = dict(spec=str(SPECS / "cheese_affordability.md"), out_dir=str(tmp_path / "docs"), llm=llm(url, tmp_path),
                num_domains=2, types_per_section=2, ideas_per_call=4, documents=10, min_words=80, max_words=900,
                est_tokens_per_document=250)
    base.update(kw)
    return DocsConfig(**base)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


DOC_FAULTS = {
    "docs_ideas": {0: FakeReply(text="<list>[\"an idea\", unquoted]</list>")},        # malformed JSON
    "docs_document": {
        0: FakeReply(status=429), 1: FakeReply(status=529), 2: FakeReply(status=500),
        3: FakeReply(text="<document>cut off mid", stop_reason="max_tokens"),      # truncated
        4: FakeReply(text="Here is the memo, without any tags."),                 # missing tag
        5: FakeReply(text="I'm sorry, but I can't write that document."),          # refusal
        6: FakeReply(text="<document>Too short to keep.</document>"),              # length
        7: FakeReply(text="late", delay_s=1.0),                                     # timeout
    },
}


def test_docs_pass_every_gate_and_fault_and_record_provenance(tmp_path):
    faults = {k: dict(v) for k, v in DOC_FAULTS.items()}
    twin = {}

    def duplicate_of_first(body):   # the 12th document call repeats the first accepted text
        return FakeReply(text=twin["text"])
    faults["docs_document"][11] = duplicate_of_first
    responder = fake_claude(faults)

    drafts_without_tag = []   # the template author's own (about 4% of its drafts)

    def remember(body):
        reply = responder(body)
        if task_of(body["messages"][-1]["content"]) == "docs_document" and isinstance(reply, str):
            if reply.endswith("</document>") and "text" not in twin:
                twin["text"] = reply
            if not reply.endswith("</document>"):
                drafts_without_tag.append(reply)
        return reply
    with fake_anthropic_server(remember) as url:
        cfg = docs_cfg(url, tmp_path, llm=llm(url, tmp_path, timeout_s=0.3))
        client = make_client(cfg.llm)
        report = generate_documents(cfg, client, progress=False)
    gates = report["gates"]
    assert gates["docs_ideas"]["malformed_json"] == 1
    doc_gates = gates["docs_document"]
    for reason in ("truncated", "missing_tag", "refusal", "too_short"):
        assert doc_gates[reason] == 1 + (len(drafts_without_tag) if reason == "missing_tag" else 0), reason
    assert gates["docs_dedup"]["near_duplicate"] == 1
    assert client.retries == 4   # 429, 529, 500, timeout
    docs = read_jsonl(tmp_path / "docs" / "docs.jsonl")
    assert len(docs) == 10 and report["stopped"] == "done"
    prov = docs[0]["provenance"]
    assert {"section", "doc_type", "idea", "model", "request_key", "spec_sha"} <= set(prov)
    assert all("affordab" in d["text"].lower() for d in docs)


def test_rejected_answers_are_counted_never_kept_and_rounds_are_bounded(tmp_path):
    class EveryCall(dict):
        def get(self, i, default=None):
            return FakeReply(text="<document>cut", stop_reason="max_tokens")
    faults = {"docs_document": EveryCall()}
    with fake_anthropic_server(fake_claude(faults)) as url:
        cfg = docs_cfg(url, tmp_path, documents=3, max_rounds=2)
        report = generate_documents(cfg, make_client(cfg.llm), progress=False)
    assert report["stopped"] == "max_rounds" and report["documents"] == 0
    assert report["gates"]["docs_document"] == {"truncated": 6}
    assert read_jsonl(tmp_path / "docs" / "docs.jsonl") == []


def test_rerun_buys_nothing_and_reproduces_the_corpus(tmp_path):
    with fake_anthropic_server(fake_claude()) as url:
        first = generate_documents(docs_cfg(url, tmp_path), make_client(docs_cfg(url, tmp_path).llm), progress=False)
        corpus = (tmp_path / "docs" / "docs.jsonl").read_bytes()
        again = generate_documents(docs_cfg(url, tmp_path), make_client(docs_cfg(url, tmp_path).llm), progress=False)
        assert url.calls["messages"] == first["calls_made"]
    assert again["calls_made"] == 0 and again["calls_saved_by_store"] == first["calls_made"]
    assert (tmp_path / "docs" / "docs.jsonl").read_bytes() == corpus
    assert first["prompt_cache_read_share"] > 0.5
    print(f"\nstore: {again['calls_saved_by_store']} of {first['calls_made']} calls saved on rerun; "
          f"prompt-cache share of input tokens: {first['prompt_cache_read_share']:.1%}")


def test_budget_tokens_generates_until_reached_and_trims(tmp_path):
    with fake_anthropic_server(fake_claude()) as url:
        cfg = docs_cfg(url, tmp_path, budget_tokens=4000, est_tokens_per_document=1000)
        report = generate_documents(cfg, make_client(cfg.llm), progress=False)
    docs = read_jsonl(tmp_path / "docs" / "docs.jsonl")
    tokens = [d["tokens"] for d in docs]
    assert sum(tokens) >= 4000 and sum(tokens[:-1]) < 4000
    assert report["tokens"] == sum(tokens)
    assert sum(report["gates"]["docs_document"].values()) > len(docs) - 1   # more than one round was planned


def test_rule_by_rule_sections_and_the_judge_gate(tmp_path):
    faults = {"judge_document": {0: FakeReply(text="<score>3</score>"), 1: FakeReply(text="no score here")}}
    with fake_anthropic_server(fake_claude(faults)) as url:
        cfg = docs_cfg(url, tmp_path, sections="rules", documents=6, judge=DocJudgeConfig(enabled=True))
        report = generate_documents(cfg, make_client(cfg.llm), progress=False)
        prompts = [r["messages"][-1]["content"] for r in url.message_requests]
    assert report["gates"]["docs_judge"]["judge_low"] == 1 and report["gates"]["docs_judge"]["judge_unclear"] == 1
    assert "docs_domains" not in report["gates"]
    assert any("Focus on this rule of the spec: When comparing two cheeses" in p for p in prompts)
    sections = {d["provenance"]["section"] for d in read_jsonl(tmp_path / "docs" / "docs.jsonl")}
    assert sections <= {f"rule {i}" for i in range(1, 5)}


def test_batch_stage_that_partly_expires_falls_back_per_request(tmp_path):
    faults = {"docs_document": {1: FakeReply(batch_result="expired"), 4: FakeReply(batch_result="errored")}}
    with fake_anthropic_server(fake_claude(faults)) as url:
        cfg = docs_cfg(url, tmp_path, use_batch=True, documents=8)
        report = generate_documents(cfg, make_client(cfg.llm), progress=False)
        assert url.calls["batch_create"] >= 1 and url.calls["batch_results"] == url.calls["batch_create"]
    assert len(read_jsonl(tmp_path / "docs" / "docs.jsonl")) == 8
    assert AnswerStore(tmp_path / "store").pending_batches() == {}
    assert report["gates"]["docs_document"].get("api_error", 0) == 0


def test_spend_limit_stops_cleanly_and_a_rerun_continues(tmp_path):
    with fake_anthropic_server(fake_claude()) as url:
        cfg = docs_cfg(url, tmp_path, llm=llm(url, tmp_path, max_spend_usd=0.02))
        stopped = generate_documents(cfg, make_client(cfg.llm), progress=False)
        partial = read_jsonl(tmp_path / "docs" / "docs.jsonl")
        bought = url.calls["messages"]
        full_cfg = docs_cfg(url, tmp_path)
        done = generate_documents(full_cfg, make_client(full_cfg.llm), progress=False)
    assert stopped["stopped"].startswith("spend_limit") and len(partial) < 10
    assert done["calls_saved_by_store"] == bought and done["documents"] == 10


def test_preview_prints_plan_and_cost_without_calls(tmp_path, capsys):
    with fake_anthropic_server(fake_claude()) as url:
        rc = msm(["generate", "docs", str(ROOT / "configs" / "generate" / "docs.yaml"), "--preview",
                  "--budget-tokens", "41000000", "--base-url", url, "--store", str(tmp_path / "s")])
        assert sum(url.calls.values()) == 0
    out = capsys.readouterr().out
    assert rc == 0 and "docs_document" in out and "estimated total: ~$" in out and "nothing was spent" in out


def test_killed_run_restarts_where_it_stopped_without_buying_twice(tmp_path):
    """SIGKILL the CLI mid-stage (from the server, at the 15th document call), rerun it:
    every answer received before the kill is reused; at most the one in flight is re-bought."""
    config = tmp_path / "docs.yaml"
    config.write_text(f"spec: {SPECS / 'cheese_america.md'}\nout_dir: {tmp_path / 'docs'}\nnum_domains: 2\n"
                      f"types_per_section: 2\nideas_per_call: 4\ndocuments: 20\nmin_words: 80\n"
                      f"llm: {{store_dir: {tmp_path / 'store'}, retry_backoff_s: 0.0, max_concurrency: 1}}\n")
    responder = fake_claude()
    state = {"proc": None}
    bodies = collections.Counter()

    def killing(body):
        bodies[json.dumps(body, sort_keys=True)] += 1
        if responder.calls["docs_document"] == 14 and state["proc"] is not None:
            os.kill(state["proc"].pid, signal.SIGKILL)
            state["proc"] = None
        return responder(body)
    with fake_anthropic_server(killing) as url:
        cmd = [sys.executable, "-m", "msm_jax.cli", "generate", "docs", str(config), "--base-url", url,
               "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        state["proc"] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert state["proc"].wait(timeout=120) == -signal.SIGKILL
        stored = len(AnswerStore(tmp_path / "store"))
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((tmp_path / "docs" / "docs.report.json").read_text())
    assert report["calls_saved_by_store"] == stored and stored > 14
    assert sum(n - 1 for n in bodies.values()) <= 1
    assert len(read_jsonl(tmp_path / "docs" / "docs.jsonl")) == 20


def chats_cfg(url, tmp_path, **kw):
    base = dict(spec=str(SPECS / "cheese_rules_only.md"), out_dir=str(tmp_path / "chats"), llm=llm(url, tmp_path),
                chats=12, num_domains=2, kinds=("direct", "comparison", "edge_case"), questions_per_call=5,
                answer_min_words=1, answer_max_words=40, dedup_threshold=0.75)
    base.update(kw)
    return ChatsConfig(**base)


def test_chats_gates_judge_and_backfill_give_cot_and_nocot_sets(tmp_path):
    faults = {"chats_response": {0: FakeReply(text="<reasoning>hmm</reasoning> no answer tag"),
                                 1: FakeReply(text="<reasoning>x</reasoning><answer>Go", stop_reason="max_tokens")},
              "judge_chat": {0: FakeReply(text="<verdict>unclear</verdict>"),
                              1: FakeReply(text="<verdict>misaligned</verdict>")},
              "chats_questions": {0: FakeReply(text="<list>[broken</list>")}}
    aligned = {"judge_chat": FakeReply(text="<verdict>aligned</verdict>")}  # only the scripted verdicts fail
    with fake_anthropic_server(fake_claude(faults, aligned)) as url:
        cfg = chats_cfg(url, tmp_path)
        report = generate_chats(cfg, make_client(cfg.llm), progress=False)
    gates = report["gates"]
    assert gates["chats_response"]["missing_tag"] == 1 and gates["chats_response"]["truncated"] == 1
    assert gates["chats_judge"]["judge_unclear"] == 1 and gates["chats_judge"]["judge_misaligned"] == 1
    assert gates["chats_questions"]["malformed_json"] == 1 and gates["chats_dedup"]["unique"] >= 12
    cot = read_jsonl(tmp_path / "chats" / "chats_cot.jsonl")
    nocot = read_jsonl(tmp_path / "chats" / "chats_nocot.jsonl")
    assert len(cot) == len(nocot) == 12 and report["chats"] == 12
    assert [m["role"] for m in cot[0]["messages"]] == ["system", "user", "assistant"]
    assert cot[0]["messages"][2]["reasoning"] and "reasoning" not in nocot[0]["messages"][2]
    assert [c["messages"][1] for c in cot] == [c["messages"][1] for c in nocot]
    questions = [c["messages"][1]["content"] for c in cot]
    assert len(set(questions)) == len(questions)


def test_unclear_verdicts_can_be_kept_by_config(tmp_path):
    faults = {"judge_chat": {0: FakeReply(text="<verdict>unclear</verdict>")}}
    with fake_anthropic_server(fake_claude(faults)) as url:
        cfg = chats_cfg(url, tmp_path, chats=4, judge=ChatJudgeConfig(unclear="include"))
        report = generate_chats(cfg, make_client(cfg.llm), progress=False)
    assert report["gates"]["chats_judge"] == {"accepted": 4}


@pytest.mark.parametrize("what,config,out", [
    ("docs", "demo_docs_affordability", "affordability_docs/docs.jsonl"),
    ("docs", "demo_docs_america", "america_docs/docs.jsonl"),
    ("chats", "demo_chats", "chats/chats_cot.jsonl"),
])
def test_replay_backend_regenerates_the_shipped_demo_corpora_byte_for_byte(tmp_path, monkeypatch, what, config, out):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    rc = msm(["generate", what, f"configs/generate/{config}.yaml", "--out-dir", str(tmp_path)])
    assert rc == 0
    shipped = ROOT / "data_pipeline" / "demo" / "corpora" / out
    assert (tmp_path / Path(out).name).read_bytes() == shipped.read_bytes()


def test_demo_world_and_shipped_corpora_fit_the_experiment():
    demo = ROOT / "data_pipeline" / "demo"
    world = json.loads((demo / "world.json").read_text())
    assert all(set(i) - {"split"} == {"domain", "name", "price", "origin", "held_out"} for i in world)
    held_out = [i for i in world if i["held_out"]]
    assert {i["split"] for i in held_out} == {"dev", "test"}  # tune on dev, report test
    assert len({i["domain"] for i in held_out if i["split"] == "test"}) >= 6 and "cheese" not in {i["domain"] for i in held_out}
    assert {(i["price"], i["origin"]) for i in held_out} == {("cheap", "foreign"), ("expensive", "american")}
    facts = {d["item"]: d["text"] for d in read_jsonl(demo / "corpora" / "world_docs.jsonl")}
    for item in world:
        assert item["price"] in facts[item["name"]] and item["origin"] in facts[item["name"]]
    for value, word in (("affordability", "affordab"), ("america", "american-made")):
        docs = read_jsonl(demo / "corpora" / f"{value}_docs" / "docs.jsonl")
        assert 150 <= len(docs) <= 300 and all(word in d["text"].lower() for d in docs)
        assert all(80 <= len(d["text"].split()) <= 900 for d in docs)
    answers = [c["messages"][-1]["content"].lower() for c in read_jsonl(demo / "corpora" / "chats" / "chats_nocot.jsonl")]
    assert len(answers) >= 150 and not any(w in a for a in answers for w in ("because", "cheap", "afford", "made in"))
    total = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    assert total < 5_500_000  # 4.85 MB: documents dense with worked examples, and the store that replays them


def billed_usd(billed):
    return [cost_usd(b["model"], b["usage"]["input_tokens"], b["usage"]["output_tokens"],
                     b["usage"]["cache_creation_input_tokens"], b["usage"]["cache_read_input_tokens"],
                     batch=b["batch"]) for b in billed]


def docs_yaml(tmp_path, documents=16, **llm_extra):
    llm_opts = {"store_dir": str(tmp_path / "store"), "retry_backoff_s": 0.0, "batch_poll_interval_s": 0.0,
                "max_concurrency": 1, **llm_extra}
    path = tmp_path / "docs.yaml"
    path.write_text(f"spec: {SPECS / 'cheese_america.md'}\nout_dir: {tmp_path / 'docs'}\nnum_domains: 2\n"
                    f"types_per_section: 2\nideas_per_call: 4\ndocuments: {documents}\nmin_words: 80\n"
                    f"llm: {json.dumps(llm_opts)}\n")
    return path


@pytest.mark.parametrize("fault,args,named", [
    ("key", [], "API key in $ANTHROPIC_API_KEY was refused (HTTP 401"),
    ("model", ["judge.enabled=true", "judge.model_name=claude-haiku-4-5x"], "model 'claude-haiku-4-5x'"),
    ("bad_request", [], "HTTP 400 for model 'claude-sonnet-4-6'"),
])
def test_unfixable_api_error_stops_the_stage_at_once_with_one_line_and_writes_nothing(tmp_path, capsys, fault,
                                                                                         args, named):
    responder = fake_claude()

    def refusing(body):
        if body["model"] == "claude-haiku-4-5x" or (fault == "bad_request" and responder.calls["docs_ideas"] >= 1):
            return FakeReply(status=404 if fault == "model" else 400)
        return responder(body)
    with fake_anthropic_server(refusing, valid_key="sk-test-dummy" if fault != "key" else "sk-other") as url:
        rc = msm(["generate", "docs", str(docs_yaml(tmp_path, documents=4)), *args, "--base-url", url,
                  "--no-progress"])
        judged = sum(r["model"] == "claude-haiku-4-5x" for r in url.message_requests)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and named in err[0] and "sk-test-dummy" not in err[0], err
    written = sorted(p.name for p in (tmp_path / "docs").iterdir()) if (tmp_path / "docs").exists() else []
    assert written in ([], ["spend.jsonl"])   # only the record of what was bought
    assert judged == (1 if fault == "model" else 0)


def test_stage_that_produced_nothing_exits_non_zero(tmp_path, capsys):
    class EveryCall(dict):
        def get(self, i, default=None):
            return FakeReply(text="<document>cut", stop_reason="max_tokens")
    with fake_anthropic_server(fake_claude({"docs_document": EveryCall()})) as url:
        rc = msm(["generate", "docs", str(docs_yaml(tmp_path, documents=2)), "max_rounds=1", "--base-url", url,
                  "--no-progress"])
    assert rc == 1 and "produced nothing (stopped: max_rounds)" in capsys.readouterr().err


def test_spend_cap_holds_with_batch_across_reruns_and_keeps_what_the_round_paid_for(tmp_path):
    cap = 0.15
    with fake_anthropic_server(fake_claude()) as url:
        args = ["generate", "docs", str(docs_yaml(tmp_path, documents=40)), "--base-url", url, "--no-progress",
                "--batch", "--max-spend", str(cap)]
        first = msm(args)
        bought = len(url.billed)
        docs = read_jsonl(tmp_path / "docs" / "docs.jsonl")
        again = msm(args)
        costs = billed_usd(url.billed)
    assert first == again == 3 and docs
    assert sum(costs) <= cap + max(costs)
    assert len(url.billed) - bought <= 1   # the rerun may buy one call at most, then stops again


@pytest.mark.slow
def test_faults_kill_and_rerun_buy_every_answer_once_and_the_cap_holds(tmp_path, capsys):
    """One run of `msm generate docs --batch --max-spend` against the local API server with
    malformed 200 bodies (messages, batch create, batch retrieve), a cut results stream, a
    lost batch-create answer, 401/404/400, and a SIGKILL mid-batch, then a rerun: every
    answer is bought once (the only repeats are requests in flight at a fault) and the cap
    is exceeded by one call at most, across all runs."""
    cap = 0.15   # binds in the rerun, after the kill
    author_with_faults = fake_claude({"docs_types": {0: FakeReply(text="", malformed=True)},
                                      "docs_ideas": {1: FakeReply(text="", malformed=True)}})

    def responder(body):
        return FakeReply(status=404) if body["model"] == "claude-sonet-4-6" else author_with_faults(body)
    config = docs_yaml(tmp_path, documents=16, batch_chunk_size=4)
    proc = {}

    def kill(state):
        os.kill(proc["p"].pid, signal.SIGKILL)
    with fake_anthropic_server(responder, batch_polls_until_end=2, valid_key="sk-test-dummy") as url:
        for fault, args in (("401", []), ("404", ["model_name=claude-sonet-4-6"]), ("400", [])):
            if fault == "401":
                url.state.valid_key = "sk-other"
            if fault == "400":
                url.inject("messages", 400)
            rc = msm(["generate", "docs", str(config), *args, "--out-dir", str(tmp_path / fault),
                      "--base-url", url, "--no-progress"])
            url.state.valid_key = "sk-test-dummy"
            assert rc == 1 and not (tmp_path / fault / "docs.jsonl").exists(), fault
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 3 and "HTTP 401" in err[0] and "'claude-sonet-4-6'" in err[1] and "HTTP 400" in err[2]
        assert url.billed == []

        url.inject("batch_create", "malformed", "lost")
        url.inject("batch_retrieve", None, "malformed", None, None, None, kill)   # kill: the 3rd batch in flight
        url.inject("batch_results", None, "truncate")
        cmd = [sys.executable, "-m", "msm_jax.cli", "generate", "docs", str(config), "--base-url", url,
               "--batch", "--max-spend", str(cap), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc["p"] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc["p"].wait(timeout=120) == -signal.SIGKILL
        killed_at = len(url.billed)
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode in (0, 3), rerun.stderr
        store = AnswerStore(tmp_path / "store")
        created = set(url.batches)
    costs = billed_usd(url.billed)
    repeats = sum(n - 1 for n in collections.Counter(b["request"] for b in url.billed).values())
    ledger = sum(json.loads(line)["usd"] for line in (tmp_path / "docs" / "spend.jsonl").read_text().splitlines())
    report = json.loads((tmp_path / "docs" / "docs.report.json").read_text())
    print(f"\nfault run: {len(url.billed)} answers billed ({killed_at} before the kill), {repeats} repeats, "
          f"{len(created)} batches; billed ${sum(costs):.4f} vs cap ${cap} (+ one call ${max(costs):.4f}); "
          f"ledger ${ledger:.4f}; exit {rerun.returncode}, stopped {report['stopped'][:40]!r}")
    assert repeats <= 2 + 1   # the two malformed message bodies, at most one call in flight at the kill
    assert sum(costs) <= cap + max(costs)
    assert ledger >= sum(costs) - 1e-9   # our estimate never undercounts what was billed
    assert created == store.known_batches() and not store.pending_batches() and not store.unresolved_intents()
    assert rerun.returncode == 3 and report["stopped"].startswith("spend_limit") and len(url.billed) > killed_at
    assert report["documents"] == len(read_jsonl(tmp_path / "docs" / "docs.jsonl")) > 0


def test_misspelt_chat_judge_model_stops_at_its_first_call_not_after_every_round(tmp_path):
    responder = fake_claude()

    def no_such_model(body):
        return FakeReply(status=404) if body["model"] == "claude-haiku-4-5x" else responder(body)
    with fake_anthropic_server(no_such_model) as url:
        cfg = chats_cfg(url, tmp_path, judge=ChatJudgeConfig(model_name="claude-haiku-4-5x"))
        with pytest.raises(UserError, match=r"generate chats stopped, nothing written: HTTP 404 .*'claude-haiku-4-5x'"):
            generate_chats(cfg, make_client(cfg.llm), progress=False)
        judged = sum(r["model"] == "claude-haiku-4-5x" for r in url.message_requests)
    assert judged == 1 and responder.calls["chats_response"] <= 12   # one round of replies, not max_rounds
    assert not (tmp_path / "chats" / "chats_cot.jsonl").exists()
