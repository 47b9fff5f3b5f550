"""The LLM layer against a local Messages/Batches API server (the real SDK, base_url)."""

import collections
import re

import pytest

from data_pipeline.llm import AnswerStore, FatalAPIError, LLMConfig, LLMError, LLMFailure, LLMRequest, make_client
from data_pipeline.llm.pricing import cost_usd
from data_pipeline.llm.spend import worst_case_usd
from fake_anthropic import FakeReply, fake_anthropic_server

API_KEY = "sk-test-secret-key-0123456789"
SPEC = "THE SPEC. " * 200


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)


def config(base_url, tmp_path, **kw):
    return LLMConfig(backend="anthropic", base_url=base_url, store_dir=str(tmp_path / "store"),
                     retry_backoff_s=0.0, batch_poll_interval_s=0.0, **kw)


def request(prompt, **kw):
    return LLMRequest(model="claude-sonnet-4-6", system=SPEC, max_tokens=64,
                      messages=[{"role": "user", "content": prompt}], metadata={"stage": "t"}, **kw)


def user_text(body):
    return body["messages"][-1]["content"]


def echo(body):
    return "answer to " + user_text(body)


def scripted(faults_by_prompt):
    """Each prompt's first answers are the scripted faults, then an echo."""
    seen = collections.Counter()

    def responder(body):
        prompt = user_text(body)
        script = faults_by_prompt.get(prompt, [])
        i = seen[prompt]
        seen[prompt] += 1
        return script[i] if i < len(script) else echo(body)
    return responder


def test_spec_block_is_cached_and_cache_reads_are_counted(tmp_path):
    with fake_anthropic_server(echo) as url:
        client = make_client(config(url, tmp_path))
        first = client.complete(request("a"))
        second = client.complete(request("b"))
        sent = url.message_requests[0]["system"][0]
    assert sent["cache_control"] == {"type": "ephemeral"} and sent["text"] == SPEC
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert client.spend.stages["t"].cache_read_share > 0.4


def test_paid_answer_is_never_requested_twice_even_by_a_new_process(tmp_path):
    with fake_anthropic_server(echo) as url:
        make_client(config(url, tmp_path)).complete(request("a"))
        again = make_client(config(url, tmp_path))
        answers = again.complete_many([request("a"), request("b")])
        assert url.calls["messages"] == 2
    assert answers[0].from_store and answers[0].text == "answer to a"
    assert again.spend.stages["t"].from_store == 1 and again.spend.stages["t"].calls == 1


def test_variant_asks_for_a_new_sample_of_the_same_prompt(tmp_path):
    with fake_anthropic_server(echo) as url:
        client = make_client(config(url, tmp_path))
        client.complete(request("a"))
        client.complete(LLMRequest(model="claude-sonnet-4-6", system=SPEC, max_tokens=64,
                                   messages=[{"role": "user", "content": "a"}], metadata={"variant": 1}))
        assert url.calls["messages"] == 2


def test_429_and_529_bursts_and_500s_are_retried_with_injected_backoff(tmp_path):
    faults = {"a": [FakeReply(status=429, retry_after_ms=0), FakeReply(status=429), FakeReply(status=529)],
              "b": [FakeReply(status=500), FakeReply(status=500)]}
    sleeps = []
    with fake_anthropic_server(scripted(faults)) as url:
        client = make_client(config(url, tmp_path, max_concurrency=2), sleep=sleeps.append)
        answers = client.complete_many([request("a"), request("b")])
        assert url.calls["messages"] == 7
    assert [a.text for a in answers] == ["answer to a", "answer to b"]
    assert client.retries == 5 and sleeps == [0.0] * 5


def test_persistent_5xx_becomes_a_failure_and_nothing_is_stored(tmp_path):
    with fake_anthropic_server(lambda body: FakeReply(status=500)) as url:
        client = make_client(config(url, tmp_path, max_retries=2))
        [answer] = client.complete_many([request("a")])
        assert url.calls["messages"] == 3
    assert isinstance(answer, LLMFailure) and "HTTP 500" in answer.error
    assert len(AnswerStore(tmp_path / "store")) == 0


@pytest.mark.parametrize("status,named", [(400, "claude-sonnet-4-6"), (403, "$ANTHROPIC_API_KEY"),
                                          (404, "misspelt model name")])
def test_unfixable_error_stops_at_the_first_call_naming_the_model_or_key(tmp_path, status, named):
    with fake_anthropic_server(lambda body: FakeReply(status=status)) as url:
        client = make_client(config(url, tmp_path, max_concurrency=1))
        with pytest.raises(FatalAPIError, match=re.escape(named)) as e:
            client.complete_many([request(f"p{i}") for i in range(4)])
        assert url.calls["messages"] == 1
    assert API_KEY not in str(e.value) and "\n" not in str(e.value)


def test_refused_key_is_named_by_its_variable_never_echoed(tmp_path):
    with fake_anthropic_server(echo, valid_key="sk-the-right-one") as url:
        client = make_client(config(url, tmp_path))
        with pytest.raises(FatalAPIError, match=r"API key in \$ANTHROPIC_API_KEY was refused \(HTTP 401") as e:
            client.complete_many([request("a")], use_batch=True)
        assert url.batches == {} and url.calls["messages"] == 0
    assert API_KEY not in str(e.value)


def test_unreadable_200_is_retried_and_charged_at_its_worst_case(tmp_path):
    with fake_anthropic_server(scripted({"a": [FakeReply(text="x", malformed=True)]})) as url:
        client = make_client(config(url, tmp_path))
        answer = client.complete(request("a"))
        assert url.calls["messages"] == 2 and len(url.billed) == 2
    spent = client.spend.stages["t"]
    assert answer.text == "answer to a" and client.retries == 1 and spent.unreadable == 1
    assert spent.cost_usd >= worst_case_usd(request("a"))


def test_slow_answer_times_out_and_is_retried(tmp_path):
    with fake_anthropic_server(scripted({"a": [FakeReply(text="late", delay_s=1.0)]})) as url:
        client = make_client(config(url, tmp_path, timeout_s=0.2))
        answer = client.complete(request("a"))
    assert answer.text == "answer to a" and client.retries == 1


def test_truncated_answer_is_stored_and_flagged(tmp_path):
    with fake_anthropic_server(lambda b: FakeReply(text="cut", stop_reason="max_tokens")) as url:
        answer = make_client(config(url, tmp_path)).complete(request("a"))
    assert answer.truncated and AnswerStore(tmp_path / "store").get(request("a").key()).truncated


def test_answer_without_a_text_block_reaches_the_gates_as_empty_text(tmp_path):
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "s"}]
    with fake_anthropic_server(lambda b: FakeReply(content=blocks)) as url:
        answer = make_client(config(url, tmp_path)).complete(request("a"))
    assert answer.text == "" and answer.stop_reason == "end_turn"


def test_batch_with_expired_and_errored_items_falls_back_per_request(tmp_path):
    faults = {"p1": [FakeReply(batch_result="expired")], "p3": [FakeReply(batch_result="errored")]}
    reqs = [request(f"p{i}") for i in range(5)]
    with fake_anthropic_server(scripted(faults)) as url:
        client = make_client(config(url, tmp_path))
        answers = client.complete_many(reqs, use_batch=True)
        assert url.calls["batch_create"] == 1 and url.calls["messages"] == 2
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(5)]
    assert client.spend.stages["t"].calls == 5
    assert AnswerStore(tmp_path / "store").pending_batches() == {}


def test_batches_are_submitted_in_chunks(tmp_path):
    with fake_anthropic_server(echo) as url:
        client = make_client(config(url, tmp_path, batch_chunk_size=2))
        client.complete_many([request(f"p{i}") for i in range(5)], use_batch=True)
        assert url.calls["batch_create"] == 3 and url.calls["messages"] == 0


def test_batch_past_its_max_wait_is_canceled_and_the_rest_asked_one_by_one(tmp_path):
    reqs = [request(f"p{i}") for i in range(4)]
    with fake_anthropic_server(echo, batch_polls_until_end=100) as url:
        client = make_client(config(url, tmp_path, batch_max_wait_s=0.0))
        answers = client.complete_many(reqs, use_batch=True)
        assert url.calls["batch_cancel"] == 1 and url.calls["messages"] == 2
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(4)]


class Killed(BaseException):
    pass


def test_run_killed_while_a_batch_runs_resumes_it_by_id_without_resubmitting(tmp_path):
    reqs = [request(f"p{i}") for i in range(4)]

    def die(_seconds):
        raise Killed()
    with fake_anthropic_server(echo, batch_polls_until_end=2) as url:
        with pytest.raises(Killed):
            make_client(config(url, tmp_path), sleep=die).complete_many(reqs, use_batch=True)
        assert list(AnswerStore(tmp_path / "store").pending_batches())
        answers = make_client(config(url, tmp_path)).complete_many(reqs, use_batch=True)
        assert url.calls["batch_create"] == 1 and url.calls["messages"] == 0
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(4)]


def test_spend_limit_stops_cleanly_and_keeps_what_was_bought(tmp_path):
    with fake_anthropic_server(echo) as url:
        client = make_client(config(url, tmp_path, max_spend_usd=1e-9, max_concurrency=1))
        answers = client.complete_many([request(f"p{i}") for i in range(3)])
        assert url.calls["messages"] == 1
    assert answers[0].text == "answer to p0"
    assert [a.kind for a in answers[1:]] == ["spend_limit"] * 2
    assert "rerun with a higher --max-spend" in answers[1].error
    assert len(AnswerStore(tmp_path / "store")) == 1


def billed_usd(url):
    return sum(cost_usd(b["model"], b["usage"]["input_tokens"], b["usage"]["output_tokens"],
                        b["usage"]["cache_creation_input_tokens"], b["usage"]["cache_read_input_tokens"],
                        batch=b["batch"]) for b in url.billed)


def most_one_call_costs(url):
    return max(cost_usd(b["model"], b["usage"]["input_tokens"], b["usage"]["output_tokens"],
                        b["usage"]["cache_creation_input_tokens"], b["usage"]["cache_read_input_tokens"],
                        batch=b["batch"]) for b in url.billed)


def test_concurrent_calls_reserve_their_worst_case_so_the_cap_overshoots_by_one_call_at_most(tmp_path):
    cap = 0.004
    slow = lambda body: FakeReply(text="x" * 250, delay_s=0.02)   # noqa: E731 (calls overlap; output-heavy)
    with fake_anthropic_server(slow) as url:
        client = make_client(config(url, tmp_path, max_spend_usd=cap, max_concurrency=8))
        answers = client.complete_many([request(f"p{i}") for i in range(40)])
        assert billed_usd(url) <= cap + most_one_call_costs(url)
        assert 1 < len(url.billed) < 40
    assert sum(isinstance(a, LLMFailure) and a.kind == "spend_limit" for a in answers) == 40 - len(url.billed)


def test_spend_limit_counts_what_earlier_runs_of_the_stage_bought(tmp_path):
    ledger = tmp_path / "out" / "spend.jsonl"
    with fake_anthropic_server(echo) as url:
        first = make_client(config(url, tmp_path))
        first.spend.open_ledger(ledger)
        first.complete_many([request(f"p{i}") for i in range(3)])
        spent = first.spend.spent_usd()
        again = make_client(config(url, tmp_path, max_spend_usd=spent))
        again.spend.open_ledger(ledger)
        answers = again.complete_many([request(f"p{i}") for i in range(4)])
        assert url.calls["messages"] == 3
    assert again.spend.before_usd == pytest.approx(spent)
    assert [getattr(a, "kind", "answer") for a in answers] == ["answer"] * 3 + ["spend_limit"]


def test_batch_is_created_only_for_what_fits_under_the_cap(tmp_path):
    reqs = [request(f"p{i}") for i in range(40)]
    cap = 2.5 * worst_case_usd(reqs[0], batch=True)
    with fake_anthropic_server(lambda body: "x" * 250) as url:
        client = make_client(config(url, tmp_path, max_spend_usd=cap))
        answers = client.complete_many(reqs, use_batch=True)
        first = next(iter(url.batches.values()))
        assert len(first["results"]) == 3 and url.calls["messages"] == 0
        assert billed_usd(url) <= cap + most_one_call_costs(url)
    capped = [a for a in answers if isinstance(a, LLMFailure)]
    assert capped and all(a.kind == "spend_limit" for a in capped)
    assert len(capped) + len(url.billed) == 40


def test_replay_answers_from_the_store_only(tmp_path):
    with fake_anthropic_server(echo) as url:
        make_client(config(url, tmp_path)).complete(request("a"))
    replay = make_client(LLMConfig(backend="replay", store_dir=str(tmp_path / "store")))
    hit, miss = replay.complete_many([request("a"), request("b")])
    assert hit.text == "answer to a" and isinstance(miss, LLMFailure) and miss.kind == "missing"


def test_api_key_never_reaches_the_store(tmp_path):
    with fake_anthropic_server(echo) as url:
        client = make_client(config(url, tmp_path))
        client.complete(request("a"))
        client.complete_many([request("b")], use_batch=True)
    for path in (tmp_path / "store").iterdir():
        assert API_KEY not in path.read_text()


def test_torn_last_line_of_a_killed_run_is_skipped(tmp_path, capsys):
    with fake_anthropic_server(echo) as url:
        make_client(config(url, tmp_path)).complete(request("a"))
    with open(tmp_path / "store" / "answers.jsonl", "a") as f:
        f.write('{"key": "abc", "respo')
    store = AnswerStore(tmp_path / "store")
    assert len(store) == 1 and "answers.jsonl:2: unreadable line skipped" in capsys.readouterr().err


def test_openai_compatible_backend(tmp_path, monkeypatch):
    with fake_anthropic_server(scripted({"a": [FakeReply(status=503)]})) as url:
        cfg = LLMConfig(backend="openai", base_url=url + "/v1", store_dir=str(tmp_path / "s"),
                        retry_backoff_s=0.0)
        client = make_client(cfg)
        answer = client.complete(request("a"))
        assert url.message_requests == []   # the chat-completions route, not /v1/messages
    assert answer.text == "answer to a" and answer.stop_reason == "end_turn" and client.retries == 1


@pytest.mark.parametrize("fault", ["malformed", "lost"])
def test_lost_batch_create_answer_is_reconciled_not_bought_twice(tmp_path, fault):
    reqs = [request(f"p{i}") for i in range(4)]
    with fake_anthropic_server(echo) as url:
        url.inject("batch_create", fault)
        client = make_client(config(url, tmp_path))
        answers = client.complete_many(reqs, use_batch=True)
        assert url.calls["batch_create"] == 1 and url.calls["batch_list"] == 1 and url.calls["messages"] == 0
        assert len(url.billed) == 4
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(4)]
    assert AnswerStore(tmp_path / "store").pending_batches() == {}


def test_batch_a_killed_run_created_without_hearing_back_is_adopted_by_the_rerun(tmp_path):
    reqs = [request(f"p{i}") for i in range(4)]
    with fake_anthropic_server(echo) as url:
        url.inject("batch_create", "lost")
        url.inject("batch_list", 500)   # the run dies (gives up) before it can look the batch up
        with pytest.raises(LLMError, match="listing batches"):
            make_client(config(url, tmp_path, max_retries=0)).complete_many(reqs, use_batch=True)
        assert AnswerStore(tmp_path / "store").unresolved_intents()
        answers = make_client(config(url, tmp_path)).complete_many(reqs, use_batch=True)
        assert url.calls["batch_create"] == 1 and url.calls["messages"] == 0 and len(url.billed) == 4
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(4)]
    assert AnswerStore(tmp_path / "store").unresolved_intents() == {}


def test_unreadable_batch_status_and_cut_results_stream_are_retried(tmp_path):
    reqs = [request(f"p{i}") for i in range(6)]
    with fake_anthropic_server(echo) as url:
        url.inject("batch_retrieve", "malformed")
        url.inject("batch_results", "truncate", "truncate")
        client = make_client(config(url, tmp_path))
        answers = client.complete_many(reqs, use_batch=True)
        assert url.calls["batch_results"] == 3 and url.calls["messages"] == 0
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(6)]
    assert client.retries == 3 and client.spend.stages["t"].calls == 6   # each item charged once


def test_results_stream_cut_every_time_stops_with_one_line_and_resumes_on_rerun(tmp_path):
    reqs = [request(f"p{i}") for i in range(4)]
    with fake_anthropic_server(echo) as url:
        url.inject("batch_results", "truncate", "truncate")
        with pytest.raises(LLMError, match="rerun to resume it by id"):
            make_client(config(url, tmp_path, max_retries=1)).complete_many(reqs, use_batch=True)
        answers = make_client(config(url, tmp_path)).complete_many(reqs, use_batch=True)
        assert url.calls["batch_create"] == 1 and url.calls["messages"] == 0
    assert [a.text for a in answers] == [f"answer to p{i}" for i in range(4)]


def test_misspelt_judge_model_stops_the_judge_at_its_first_call(tmp_path):
    from eval.judge import JudgeConfig, ask
    from msm_jax.errors import UserError

    def no_such_model(body):
        return FakeReply(status=404) if body["model"] == "claude-sonet-4-6" else echo(body)
    with fake_anthropic_server(no_such_model) as url:
        cfg = JudgeConfig(model_id="claude-sonet-4-6", llm=config(url, tmp_path, max_concurrency=1))
        with pytest.raises(UserError, match=r"judge \('claude-sonet-4-6'|HTTP 404 not found for model 'claude-sonet-4-6'"):
            ask(cfg, [f"q{i}" for i in range(5)], stage="judge")
        assert url.calls["messages"] == 1
