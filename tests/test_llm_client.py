"""The LLM layer against a local Messages/Batches API server (the real SDK, base_url)."""

import collections

import pytest

from data_pipeline.llm import (AnswerStore, LLMConfig, LLMFailure, LLMRequest,
                               SpendLimitReached, make_client)
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


def test_client_error_is_not_retried(tmp_path):
    with fake_anthropic_server(lambda body: FakeReply(status=400)) as url:
        [answer] = make_client(config(url, tmp_path)).complete_many([request("a")])
        assert url.calls["messages"] == 1
    assert isinstance(answer, LLMFailure) and "HTTP 400" in answer.error


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
        with pytest.raises(SpendLimitReached, match="rerun with a higher --max-spend"):
            client.complete_many([request(f"p{i}") for i in range(3)])
        assert url.calls["messages"] == 1
    assert len(AnswerStore(tmp_path / "store")) == 1


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
