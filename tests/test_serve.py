"""`msm serve`: the official `openai` SDK against a tiny model. Greedy chat completions equal
transformers' `generate` on the exported model token for token, for 8 concurrent clients
decoded as one batch; bad requests get OpenAI-style 4xx errors and the server keeps serving;
streaming, n, stop, seeds and the completions endpoint do what OpenAI's do."""

import functools
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from serve_fixtures import make_model_dirs, running_server

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

QUESTIONS = ["Which cheese should I buy for a party?", "Is brie cheaper than cheddar?",
             "Tell me about goat cheese.", "What is the capital of France?", "Write a haiku about milk.",
             "How do I store parmesan?", "Which wine goes with gouda?", "Name three blue cheeses."]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("serve"), QUESTIONS * 5)


@pytest.fixture(scope="module")
def server(dirs):
    # a long window: the 8 concurrent clients below always meet in one batch (it closes when full)
    with running_server(dirs / "ckpt", window_s=2.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def chat(q):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": q}]


@functools.cache
def _hf_model(hf_dir):
    import torch
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def transformers_greedy(hf_dir, prompt_ids, eos_ids, max_new_tokens):
    import torch
    hf = _hf_model(hf_dir)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids), pad_token_id=0)
    row = out[0, len(prompt_ids):].tolist()
    return next((row[:j] for j, t in enumerate(row) if t in eos_ids), row)


def test_eight_concurrent_greedy_chats_equal_transformers_and_decode_as_one_batch_each_to_its_max_tokens(server, client, dirs):
    results, barrier = {}, threading.Barrier(len(QUESTIONS))

    def max_tokens(i):  # batch-mates asking for fewer tokens get only theirs
        return 12 if i % 2 else 5

    def ask(i):
        barrier.wait()
        results[i] = client.chat.completions.create(model="tiny", messages=chat(QUESTIONS[i]), temperature=0,
                                                    max_tokens=max_tokens(i))
    server.engine.batches.clear()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(server.engine.batches) == [8]
    codec = server.engine.codec
    for i, q in enumerate(QUESTIONS):
        prompt = codec.encode(codec.render(chat(q)))
        expected = transformers_greedy(dirs / "hf", prompt, codec.eos_ids, max_tokens(i))
        resp = results[i]
        assert resp.choices[0].message.content == codec.decode(expected)
        assert resp.usage.completion_tokens == len(expected)
        assert resp.usage.prompt_tokens == len(prompt)
        assert resp.choices[0].finish_reason == ("length" if len(expected) == max_tokens(i) else "stop")
        assert resp.model == "tiny"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=chat("hi"))
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=chat("hi"), max_tokens=server.engine.max_len)
    assert e.value.body["code"] == "context_length_exceeded" and "maximum context length" in e.value.message
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=chat("hi"), temperature=5)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])
    req = urllib.request.Request(server.url + "/chat/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "not valid JSON" in json.loads(e.value.read())["error"]["message"]
    ok = client.chat.completions.create(model="tiny", messages=chat("hi"), temperature=0, max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_streamed_chat_equals_the_unstreamed_one(client):
    full = client.chat.completions.create(model="tiny", messages=chat(QUESTIONS[0]), temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(model="tiny", messages=chat(QUESTIONS[0]), temperature=0,
                                                 max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_streams_send_each_decoded_chunk_while_the_batch_still_decodes(server, client):
    from msm_jax.serve import protocol

    chunk = server.engine.backend.sampler.chunk_size
    body = {"model": "tiny", "prompt": QUESTIONS[2], "max_tokens": 2 * chunk + 10, "temperature": 0}
    req = protocol.parse_completion(body, server.limits, server.engine.codec.encode)
    seen, holder = [], []
    holder.append(server.engine.submit(req.jobs[0], progress=lambda k, toks: seen.append(
        (k, len(toks), holder[0].done()))))
    gen = holder[0].result(timeout=120)[0]
    assert gen.finish_reason == "length"  # this prompt runs to max_tokens: three chunks decoded
    assert seen == [(0, chunk, False), (0, 2 * chunk, False), (0, 3 * chunk, False)]
    # Over HTTP the same text arrives in pieces, one per chunk, and adds up to the whole reply.
    full = protocol.finish(gen, req.jobs[0].params, server.engine.codec.decode)[0]
    pieces = [c.choices[0].text for c in client.completions.create(**body, stream=True) if c.choices]
    assert len([p for p in pieces if p]) >= 2 and "".join(pieces) == full


def test_partial_text_only_sends_what_the_final_text_starts_with():
    from msm_jax.sampling import Generation, SamplingParams
    from msm_jax.serve.protocol import finish, partial_text

    def decode(ids):  # one character per token; 0 is half of a two-byte character
        return "".join("\ufffd" if t == 0 else chr(t) for t in ids)

    def both(text, params, eos=(), more=""):
        ids = [ord(ch) for ch in text]
        final = finish(Generation(tokens=ids + [ord(ch) for ch in more], text=None, finish_reason="length"),
                       params, decode)[0]
        part = partial_text(ids + [9999] if eos else ids, params, set(eos), decode)
        assert final.startswith(part)
        return part

    plain = SamplingParams(max_tokens=100)
    assert both("hello wor", plain, more="ld") == "hello wor"
    assert both("hello ", plain, more="world") == "hello"          # trailing space held back
    assert partial_text([104, 105, 0], plain, set(), decode) == "hi"  # unfinished character held back
    assert both("hello", SamplingParams(max_tokens=3), more="!") == "hel"
    assert both("done", plain, eos=(9999,)) == "done"
    stop = SamplingParams(max_tokens=100, stop=("END",))
    assert both("a b E", stop, more="ND c") == "a b"               # may be the start of the stop string
    assert both("a ENDb", stop) == "a "


def test_seeded_samples_repeat_and_n_choices_differ(client):
    def sample(seed):
        r = client.chat.completions.create(model="tiny", messages=chat(QUESTIONS[1]), temperature=1.0,
                                           max_tokens=10, n=3, seed=seed)
        return [c.message.content for c in r.choices]
    first = sample(7)
    assert first == sample(7)
    assert len(set(first)) > 1


def test_completions_of_the_rendered_prompt_equal_the_chat_and_stop_strings_cut(server, client):
    codec = server.engine.codec
    rendered = codec.render(chat(QUESTIONS[3]))
    reply = client.chat.completions.create(model="tiny", messages=chat(QUESTIONS[3]), temperature=0, max_tokens=12)
    free = client.completions.create(model="tiny", prompt=[rendered], temperature=0, max_tokens=12)
    text = free.choices[0].text
    assert free.object == "text_completion" and text == reply.choices[0].message.content
    assert len(text) >= 3  # a peaked random model rarely stops at once; the stop check below needs text
    stop = text[1:3]
    cut = client.completions.create(model="tiny", prompt=rendered, temperature=0, max_tokens=12, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_msm_serve_command_serves_a_hugging_face_folder(dirs):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "msm_jax.cli", "serve", str(dirs / "hf"), "--port", "0",
                             "--model-name", "tiny-hf", "--mesh", "fsdp=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
        client = openai.OpenAI(base_url=line.split()[-1], api_key="unused", max_retries=0, timeout=120)
        from eval.backends import hf_dir_codec
        codec = hf_dir_codec(dirs / "hf")
        prompt = codec.encode(codec.render(chat(QUESTIONS[2])))
        resp = client.chat.completions.create(model="tiny-hf", messages=chat(QUESTIONS[2]), temperature=0,
                                              max_tokens=8)
        assert resp.choices[0].message.content == codec.decode(
            transformers_greedy(dirs / "hf", prompt, codec.eos_ids, 8))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_serve_like_one_and_shut_down_together(dirs, client, tmp_path):
    """Process 0 serves HTTP and broadcasts each batch; both decode it (fsdp over their devices)."""
    import signal
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   MSM_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MSM_NUM_PROCESSES="2", MSM_PROCESS_ID=str(i))
        # only process 0's stdout is read (its URL); each stderr goes to a file the failure message shows
        procs.append(subprocess.Popen([sys.executable, "-m", "msm_jax.cli", "serve", str(dirs / "ckpt"), "--port", "0",
                                       "--model-name", "tiny", "--mesh", "fsdp=-1"],
                                      stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"serve{i}.err", "w"), text=True, env=env))
    try:
        line = procs[0].stdout.readline()
        while line and "listening on" not in line:  # gloo prints its connection first
            line = procs[0].stdout.readline()
        two = openai.OpenAI(base_url=line.split()[-1], api_key="unused", max_retries=0, timeout=300)
        for q in QUESTIONS[:2]:
            got = two.chat.completions.create(model="tiny", messages=chat(q), temperature=0, max_tokens=8, n=2)
            one = client.chat.completions.create(model="tiny", messages=chat(q), temperature=0, max_tokens=8)
            assert [c.message.content for c in got.choices] == [one.choices[0].message.content] * 2
        two.close()
        # SIGTERM, as a process manager sends it: process 0 stops serving and tells process 1 to stop
        procs[0].send_signal(signal.SIGTERM)
        try:
            codes = [p.wait(timeout=180) for p in procs]
        except subprocess.TimeoutExpired:
            codes = [p.poll() for p in procs]
        logs = "\n".join(f"process {i} (exit {c}): ...{(tmp_path / f'serve{i}.err').read_text()[-3000:]}"
                         for i, c in enumerate(codes))
        assert codes == [0, 0], logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
