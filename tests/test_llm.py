"""LLM backends: the real ``openai`` client against a scripted OpenAI-compatible server on
127.0.0.1 (answers, retries, give-up, timeouts, malformed replies, fatal errors, concurrency,
cache, resume after a kill), and the local backend on a tiny random Llama."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from editunlearn.llm import (LLMError, LLMSettings, ResponseCache, local_model_id, make_llm,
                             request_key, task_settings)
from fake_openai import Answer, FakeOpenAI, user_text


def _settings(tmp_path, server=None, **overrides):
    values = dict(backend="openai", model="test-model", base_url=server.url if server else None,
                  temperature=0.0, seed=7, max_tokens=20, timeout=5.0, max_retries=3,
                  backoff_initial=0.01, backoff_max=0.05, concurrency=1,
                  cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return LLMSettings(**values)


def _msgs(text):
    return [{"role": "user", "content": text}]


def echo(n, body):
    return Answer(f"answer to {user_text(body)}")


def test_answers_are_cached_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    with FakeOpenAI(echo) as server:
        llm = make_llm(_settings(tmp_path, server))
        out = llm.ask([_msgs("one"), _msgs("two")])
        assert [c.text for c in out] == ["answer to one", "answer to two"]
        assert not any(c.cached for c in out)
        request = server.requests[0]
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["authorization"] == "Bearer sk-test-123"
        body = request["body"]
        assert (body["model"], body["temperature"], body["seed"], body["max_tokens"]) == \
            ("test-model", 0.0, 7, 20)
    entry = ResponseCache(tmp_path / "cache").get(out[0].key)
    assert entry["text"] == "answer to one" and entry["model"] == "test-model-served"
    assert entry["usage"]["completion_tokens"] == 3 and entry["time"]
    assert entry["messages"] == _msgs("one") and entry["params"]["seed"] == 7
    assert llm.stats["asked"] == 2 and llm.stats["prompt_tokens"] == 22


def test_cache_prevents_a_second_request(tmp_path):
    with FakeOpenAI(echo) as server:
        make_llm(_settings(tmp_path, server)).ask([_msgs("a"), _msgs("b"), _msgs("a")])
        assert server.hits == 2  # the duplicate in one call is asked once
        again = make_llm(_settings(tmp_path, server))  # a new process would read the same files
        out = again.ask([_msgs("b"), _msgs("a")])
        assert server.hits == 2 and all(c.cached for c in out)
        assert [c.text for c in out] == ["answer to b", "answer to a"]
        # what is asked is part of the key: another temperature is another request
        make_llm(_settings(tmp_path, server, temperature=0.5)).ask([_msgs("a")])
        assert server.hits == 3


def test_429_then_success_is_retried_and_logged(tmp_path, caplog):
    def respond(n, body):
        return Answer(status=429, error="rate limited", headers={"retry-after": "0"}) if n == 0 \
            else echo(n, body)

    with FakeOpenAI(respond) as server:
        llm = make_llm(_settings(tmp_path, server))
        with caplog.at_level(logging.WARNING, logger="editunlearn"):
            assert llm.ask([_msgs("q")])[0].text == "answer to q"
        assert server.hits == 2 and llm.stats["retries"] == 1
        assert "HTTP 429" in caplog.text and "retry 1 of 3" in caplog.text


def test_repeated_500s_give_up_with_a_clear_error(tmp_path):
    with FakeOpenAI(lambda n, body: Answer(status=500, error="boom")) as server:
        llm = make_llm(_settings(tmp_path, server, max_retries=2))
        with pytest.raises(LLMError) as err:
            llm.ask([_msgs("q")])
        assert server.hits == 3
    message = str(err.value)
    assert "gave up after 3 attempts" in message and "'llm.max_retries'" in message
    assert "HTTP 500" in message and "boom" in message
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_backoff_grows_exponentially_with_jitter(tmp_path):
    delays = []
    with FakeOpenAI(lambda n, body: Answer(status=503)) as server:
        llm = make_llm(_settings(tmp_path, server, max_retries=4, backoff_initial=1.0,
                                 backoff_max=5.0), sleep=delays.append)
        with pytest.raises(LLMError):
            llm.ask([_msgs("q")])
    assert len(delays) == 4
    for attempt, delay in enumerate(delays):
        cap = min(5.0, 2.0 ** attempt)
        assert cap / 2 <= delay <= cap


def test_a_timeout_is_retried(tmp_path):
    def respond(n, body):
        return Answer("late", delay=2.0) if n == 0 else echo(n, body)

    with FakeOpenAI(respond) as server:  # the late answer would have been kept without the timeout
        out = make_llm(_settings(tmp_path, server, timeout=0.3)).ask([_msgs("q")])
        assert out[0].text == "answer to q" and server.hits == 2


def test_timeouts_only_give_up_naming_the_timeout(tmp_path):
    with FakeOpenAI(lambda n, body: Answer("late", delay=1.0)) as server:
        with pytest.raises(LLMError) as err:
            make_llm(_settings(tmp_path, server, timeout=0.2, max_retries=1)).ask([_msgs("q")])
        assert server.hits == 2
    assert "'llm.timeout' = 0.2 s" in str(err.value) and "Timeout" in str(err.value)


@pytest.mark.parametrize("raw", [b"<html>bad gateway</html>", b"{}", b'{"choices": []}'])
def test_malformed_output_is_retried(tmp_path, raw):
    def respond(n, body):
        return Answer(raw=raw) if n == 0 else echo(n, body)

    with FakeOpenAI(respond) as server:
        assert make_llm(_settings(tmp_path, server)).ask([_msgs("q")])[0].text == "answer to q"
        assert server.hits == 2


def test_malformed_output_only_gives_up(tmp_path):
    with FakeOpenAI(lambda n, body: Answer(raw=b'{"choices": []}')) as server:
        with pytest.raises(LLMError, match="without a message text"):
            make_llm(_settings(tmp_path, server, max_retries=1)).ask([_msgs("q")])
        assert server.hits == 2


def test_401_stops_at_once_naming_the_key(tmp_path):
    with FakeOpenAI(lambda n, body: Answer(status=401, error="Incorrect API key")) as server:
        with pytest.raises(LLMError) as err:
            make_llm(_settings(tmp_path, server)).ask([_msgs("q")])
        assert server.hits == 1
    assert "OPENAI_API_KEY" in str(err.value) and "'llm.api_key_env'" in str(err.value)


def test_unknown_model_stops_at_once_naming_the_config_key(tmp_path):
    with FakeOpenAI(lambda n, body: Answer(status=404, error="The model `x` does not exist")) as server:
        with pytest.raises(LLMError) as err:
            make_llm(_settings(tmp_path, server, task="judge", task_keys=("model",))).ask([_msgs("q")])
        assert server.hits == 1
    assert "'judge.llm.model'" in str(err.value) and "'test-model'" in str(err.value)


def test_openai_without_a_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(LLMError) as err:
        make_llm(_settings(tmp_path, None, api_key_env="MY_KEY"))
    assert "MY_KEY" in str(err.value) and "'llm.api_key_env'" in str(err.value)


def test_concurrency_limits_requests_in_flight(tmp_path):
    with FakeOpenAI(lambda n, body: Answer(f"a{n}", delay=0.15)) as server:
        llm = make_llm(_settings(tmp_path, server, concurrency=3))
        assert len(llm.ask([_msgs(f"q{i}") for i in range(9)])) == 9
        assert server.max_in_flight == 3  # they overlapped, never more than three


_INTERRUPTED = textwrap.dedent("""
    import sys
    from editunlearn.llm import LLMSettings, make_llm
    settings = LLMSettings(backend="openai", model="m", base_url=sys.argv[1], cache_dir=sys.argv[2],
                           concurrency=1, max_retries=0, timeout=60)
    make_llm(settings).ask([[{"role": "user", "content": f"p{i}"}] for i in range(6)])
""")


def test_each_answer_is_cached_before_the_next_request_is_sent(tmp_path):
    # what makes a killed run resumable whatever the machine's load: with one request in flight,
    # request n finds the n answers before it on disk, even when writing them is slow
    cache = tmp_path / "cache"
    found = []

    def respond(n, body):
        found.append(len(list(cache.rglob("*.json"))))
        return echo(n, body)

    with FakeOpenAI(respond) as server:
        llm = make_llm(_settings(tmp_path, server))
        put = llm.cache.put

        def slow_put(key, entry):
            time.sleep(0.2)
            put(key, entry)

        llm.cache.put = slow_put
        llm.ask([_msgs(f"p{i}") for i in range(4)])
    assert found == [0, 1, 2, 3]


def test_a_killed_run_resumes_without_reasking_finished_prompts(tmp_path, repo):
    import threading

    release = threading.Event()

    def respond(n, body):  # the 4th request hangs until the asking process has been killed
        if n == 3:
            release.wait(30)
        return echo(n, body)

    cache = tmp_path / "cache"
    with FakeOpenAI(respond) as server:
        proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, server.url, str(cache)],
                                env={**os.environ, "PYTHONPATH": str(repo)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while server.hits < 4 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert server.hits == 4, proc.stderr.read().decode() if proc.poll() is not None else ""
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            release.set()
        assert len(list(cache.rglob("*.json"))) == 3
        assert not list(cache.rglob("*.tmp"))  # no half-written entry left behind
        # the same request settings as the killed run (its defaults), in a new process's place
        resumed = make_llm(LLMSettings(backend="openai", model="m", base_url=server.url,
                                       cache_dir=str(cache)))
        out = resumed.ask([_msgs(f"p{i}") for i in range(6)])
        assert [c.text for c in out] == [f"answer to p{i}" for i in range(6)]
        assert sorted(server.asked()[4:]) == ["p3", "p4", "p5"]  # only what had not been answered
        assert [c.cached for c in out] == [True] * 3 + [False] * 3


def test_task_settings_merge_and_model_under_study():
    config = {"llm": {"backend": "openai", "model": "gpt-x", "temperature": 0.0},
              "rephrase": {"llm": {}}, "judge": {"llm": {"temperature": 0.3}},
              "self_improve": {"llm": {"backend": "local", "model": None}}}
    assert task_settings(config, "rephrase")["model"] == "gpt-x"
    assert task_settings(config, "judge")["temperature"] == 0.3
    assert task_settings(config, "self_improve", "llama2-7b-chat")["model"] == "llama2-7b-chat"
    with pytest.raises(LLMError, match="self_improve.llm.model"):
        task_settings(config, "self_improve")


def test_request_key_covers_backend_model_messages_and_params():
    base = request_key("openai", "m", _msgs("q"), {"temperature": 0})
    assert base == request_key("openai", "m", _msgs("q"), {"temperature": 0})
    assert len({base, request_key("local", "m", _msgs("q"), {"temperature": 0}),
                request_key("openai", "m2", _msgs("q"), {"temperature": 0}),
                request_key("openai", "m", _msgs("q2"), {"temperature": 0}),
                request_key("openai", "m", _msgs("q"), {"temperature": 1})}) == 5


# --- local backend -------------------------------------------------------------------------------


def _spec_params(name="tiny"):
    from editunlearn.testing import tiny_model_entry

    entry = tiny_model_entry("unused")
    return {"name": name, **{k: entry[k] for k in ("chat_template", "system_prompt", "num_layers",
                                                    "modules", "dtype", "pad_token",
                                                    "eval_batch_size")}}


def _local(tmp_path, tiny_dir, **overrides):
    settings = LLMSettings(**{**dict(backend="local", model="tiny", max_tokens=6, batch_size=2,
                                     cache_dir=str(tmp_path / "cache")), **overrides})
    return make_llm(settings, model_dir=str(tiny_dir), spec_params=_spec_params(), device="cpu")


def test_local_backend_batched_greedy_cached(tmp_path, tiny_dir):
    import torch

    torch.set_num_threads(1)
    prompts = [_msgs(q) for q in ("What is the capital of Australia?", "Who wrote 1984?",
                                  "Who wrote the play Romeo and Juliet?")]
    llm = _local(tmp_path, tiny_dir)
    batched = llm.ask(prompts)
    assert all(isinstance(c.text, str) for c in batched) and any(c.text for c in batched)
    assert llm.stats["asked"] == 3
    entry = ResponseCache(tmp_path / "cache").get(batched[0].key)
    assert entry["backend"] == "local" and entry["model"].startswith("tiny@")
    assert entry["usage"]["prompt_tokens"] > 5 and 0 < entry["usage"]["completion_tokens"] <= 6
    one_by_one = _local(tmp_path / "single", tiny_dir, batch_size=1).ask(prompts)
    assert [c.text for c in one_by_one] == [c.text for c in batched]
    again = _local(tmp_path, tiny_dir)
    assert [c.text for c in again.ask(prompts)] == [c.text for c in batched]
    assert again.stats == {**again.stats, "asked": 0, "cached": 3}


def test_local_backend_seeded_sampling_is_repeatable(tmp_path, tiny_dir):
    prompts = [_msgs("What is the capital of Australia?"), _msgs("Who wrote 1984?")]
    first = _local(tmp_path / "a", tiny_dir, temperature=1.0, seed=3, max_tokens=8).ask(prompts)
    second = _local(tmp_path / "b", tiny_dir, temperature=1.0, seed=3, max_tokens=8).ask(prompts[::-1])
    assert [c.text for c in first] == [c.text for c in second][::-1]
    other_seed = _local(tmp_path / "c", tiny_dir, temperature=1.0, seed=4, max_tokens=8).ask(prompts)
    greedy = _local(tmp_path / "d", tiny_dir, max_tokens=8).ask(prompts)
    # seeded, so these hold on every run: the seed and the temperature both reach the sampler
    assert [c.text for c in other_seed] != [c.text for c in first]
    assert [c.text for c in greedy] != [c.text for c in first]


def test_local_model_id_names_the_start_patch_and_the_prompt_settings(tmp_path):
    patch = tmp_path / "p.safetensors"
    patch.write_bytes(b"abc")
    spec = {"name": "m", "chat_template": True, "system_prompt": None, "dtype": "float32",
            "pad_token": None, "eval_batch_size": 16}
    plain = local_model_id("m", None, spec)
    assert plain.startswith("m@") and len(plain) == 10
    assert local_model_id("m", str(patch), spec) == plain + "+" + local_model_id("x", str(patch), spec)[-16:]
    # what the model is asked with changes the key; how fast it is evaluated does not
    assert local_model_id("m", None, {**spec, "system_prompt": ""}) != plain
    assert local_model_id("m", None, {**spec, "eval_batch_size": 64}) == plain
