"""LLM backends for the generated data (rephrased questions, self-improvement refusals, judging),
behind one cache.

``openai``: the official ``openai`` client against any OpenAI-compatible server (OpenAI, Azure-
compatible gateways, vLLM, Ollama, llama.cpp's server). The client's own retries are off; the loop
here retries 429, 5xx, connection errors, timeouts and malformed responses with exponential
backoff and jitter, logs every retry, and stops at once with a message naming the config key to
fix on 401/403 (the key) and 404 (the model). ``local``: a transformers model from the model
registry (default: the embedded SmolLM2), prompts through its chat template, greedy decoding in
batches or seeded sampling.

Every answer is stored on disk as one JSON file per request, keyed by a hash of (backend, model,
messages, parameters) and written atomically as soon as it arrives: a run that dies mid-way keeps
what it got, and a rerun asks only what is missing. Entries record the model that answered, the
time and the token usage.

Settings are of two kinds. What is asked (``ASK_KEYS``: backend, model, base_url, temperature, seed,
max_tokens) decides the answers: it is in the cache key and reaches jobs through ``params:`` so a
change reruns them. How it is asked (timeouts, retries, backoff, concurrency, batch size, cache
folder, the API key's variable) never changes an answer: it is read at run time and reruns nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .io import write_json

LOG = logging.getLogger("editunlearn")

BACKENDS = ("openai", "local")
ASK_KEYS = ("backend", "model", "base_url", "temperature", "seed", "max_tokens")
TRANSPORT_KEYS = ("api_key_env", "timeout", "max_retries", "backoff_initial", "backoff_max",
                  "concurrency", "batch_size", "cache_dir")
TASKS = ("rephrase", "self_improve", "judge")
RETRY_STATUS = {408, 409, 429}  # plus every 5xx


class LLMError(RuntimeError):
    """A request that cannot succeed as configured; the message names what to change."""


class MalformedResponse(RuntimeError):
    """A 2xx answer without a usable message (no choices, no text, not JSON)."""


@dataclass(frozen=True)
class LLMSettings:
    backend: str
    model: str
    base_url: str | None = None
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 128
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    concurrency: int = 4
    batch_size: int = 16
    cache_dir: str = "resources/llm_cache"
    # for messages: the task whose `<task>.llm` block sets `task_keys` (the rest come from `llm:`)
    task: str | None = None
    task_keys: tuple = ()

    @classmethod
    def from_dict(cls, values: dict, task: str | None = None, task_keys=()) -> "LLMSettings":
        known = set(cls.__dataclass_fields__) - {"task", "task_keys"}
        return cls(**{k: v for k, v in values.items() if k in known}, task=task,
                   task_keys=tuple(task_keys))

    def key(self, name: str) -> str:
        """The config key that sets ``name``, quoted for a message."""
        return f"'{self.task}.llm.{name}'" if name in self.task_keys else f"'llm.{name}'"


def task_settings(config: dict, task: str, model: str | None = None) -> dict:
    """The ``llm:`` block with the task's ``<task>.llm`` overrides on top. A ``local`` backend whose
    model is null means the model under study (``model``): self-improvement's default."""
    if task not in TASKS:
        raise ValueError(f"unknown LLM task {task!r} (known: {', '.join(TASKS)})")
    merged = {**config["llm"], **(config.get(task, {}).get("llm") or {})}
    if merged.get("model") is None and merged["backend"] == "local":
        if model is None:
            raise LLMError(f"config key '{task}.llm.model' (or 'llm.model') is null, which means "
                           f"'the model under study', but task {task!r} has none: name a model")
        merged["model"] = model
    return merged


def ask_params(config: dict, task: str, model: str | None = None) -> dict:
    """What a task's job asks with (its ``params:``)."""
    merged = task_settings(config, task, model)
    return {k: merged.get(k) for k in ASK_KEYS}


def request_key(backend: str, model_id: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"backend": backend, "model": model_id, "messages": messages,
                       "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Reply:
    text: str
    model: str  # the model that answered, as the server named it
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Completion:
    text: str
    key: str
    cached: bool
    model: str
    usage: dict


class ResponseCache:
    """One JSON file per request under ``root/<key[:2]>/<key>.json``, written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            LOG.warning("unreadable cache entry %s: asking again", path)
            return None

    def put(self, key: str, entry: dict) -> None:
        write_json(self.path(key), entry)


class LLM:
    """Asks a backend through the cache. ``ask`` takes many conversations at once, so the backend
    can batch (local) or run them concurrently (openai)."""

    def __init__(self, backend, settings: LLMSettings, cache: ResponseCache | None = None,
                 log: logging.Logger = LOG):
        self.backend = backend
        self.settings = settings
        self.cache = cache
        self.log = log
        self.params = {k: getattr(settings, k) for k in ("temperature", "seed", "max_tokens")}
        self.stats = {"asked": 0, "cached": 0, "retries": 0, "prompt_tokens": 0,
                      "completion_tokens": 0}

    @property
    def name(self) -> str:
        return f"{self.backend.name}:{self.backend.model_id}"

    def key(self, messages: list[dict], params: dict | None = None) -> str:
        return request_key(self.backend.name, self.backend.model_id, messages,
                           params or self.params)

    def ask(self, conversations: list[list[dict]], temperature: float | None = None
            ) -> list[Completion]:
        """Answers in order; ``temperature`` overrides the settings' (re-asks sample: a greedy
        model would mostly repeat a rejected answer)."""
        params = self.params if temperature is None else {**self.params, "temperature": temperature}
        keys = [self.key(m, params) for m in conversations]
        results: dict[str, Completion] = {}
        pending: dict[str, list[dict]] = {}
        for key, messages in zip(keys, conversations):
            if key in results or key in pending:
                continue
            entry = self.cache.get(key) if self.cache else None
            if entry is not None:
                results[key] = Completion(entry["text"], key, True, entry["model"], entry["usage"])
                self.stats["cached"] += 1
            else:
                pending[key] = messages
        if pending:
            self.log.info("%s: %d requests (%d answered from the cache)", self.name,
                          len(pending), len(results))

        def done(key: str, reply: Reply) -> None:
            entry = {"key": key, "backend": self.backend.name, "model_id": self.backend.model_id,
                     "model": reply.model, "params": params, "messages": pending[key],
                     "text": reply.text, "finish_reason": reply.finish_reason,
                     "usage": reply.usage, "seconds": round(reply.seconds, 3),
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if self.cache:
                self.cache.put(key, entry)
            results[key] = Completion(reply.text, key, False, reply.model, reply.usage)
            self.stats["asked"] += 1
            for k in ("prompt_tokens", "completion_tokens"):
                self.stats[k] += int(reply.usage.get(k) or 0)

        if pending:
            self.backend.run(list(pending.items()), done, params["temperature"])
            self.stats["retries"] = getattr(self.backend, "retries", 0)
        return [results[k] for k in keys]

    def provenance(self) -> dict:
        return {"backend": self.backend.name, "model": self.backend.model_id, **self.params}


# --- openai ------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).strip() or type(exc).__name__
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"


class OpenAIBackend:
    """Chat completions through the official client, with the retry loop here (not the
    client's), so every retry is logged and the policy is the config's."""

    name = "openai"

    def __init__(self, settings: LLMSettings, log: logging.Logger = LOG,
                 sleep: Callable[[float], None] = time.sleep):
        import openai

        self.openai = openai
        self.settings = settings
        self.log = log
        self.sleep = sleep
        self.retries = 0
        self._rng = random.Random()  # jitter only: no effect on any answer
        key = os.environ.get(settings.api_key_env)
        if not key:
            if settings.base_url is None:
                raise LLMError(
                    f"the openai backend needs an API key in the environment variable "
                    f"{settings.api_key_env} (config key {settings.key('api_key_env')} names it), "
                    f"which is not set. Export it, point {settings.key('base_url')} at a local "
                    f"OpenAI-compatible server (vLLM, Ollama: no key needed), or set "
                    f"{settings.key('backend')} to local.")
            key = "not-needed"  # local servers accept any key
        self.url = settings.base_url or "https://api.openai.com/v1"
        # the model name alone does not say which server answers: keep the URL in the cache key
        self.model_id = settings.model if settings.base_url is None else \
            f"{settings.model}@{settings.base_url}"
        self.client = openai.OpenAI(api_key=key, base_url=settings.base_url,
                                    timeout=settings.timeout, max_retries=0)

    def _delay(self, attempt: int, exc: BaseException) -> float:
        s = self.settings
        cap = min(s.backoff_max, s.backoff_initial * 2 ** attempt)
        delay = self._rng.uniform(cap / 2, cap)  # jitter: parallel jobs do not retry in step
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            delay = max(delay, min(float(retry_after), s.backoff_max))
        except (TypeError, ValueError):
            pass
        return delay

    def _fatal(self, exc: BaseException) -> LLMError | None:
        """An error no retry can fix, as a message naming what to change; None if retryable."""
        o, s = self.openai, self.settings
        if isinstance(exc, (o.AuthenticationError, o.PermissionDeniedError)):
            return LLMError(
                f"{self.url} refused the API key ({_describe(exc)}). Check the key in the "
                f"environment variable {s.api_key_env} (config key {s.key('api_key_env')}).")
        if isinstance(exc, o.NotFoundError):
            return LLMError(
                f"{self.url} does not know the model {s.model!r} ({_describe(exc)}). Fix config "
                f"key {s.key('model')} (and {s.key('base_url')} if the server is wrong).")
        if isinstance(exc, o.APIStatusError):
            status = exc.status_code
            if status in RETRY_STATUS or status >= 500:
                return None
            names = ["model"] if "model" in str(exc).lower() else \
                ["model", "max_tokens", "temperature", "seed"]
            hint = ", ".join(s.key(name) for name in names)
            return LLMError(f"{self.url} rejected the request ({_describe(exc)}); check config "
                            f"key {hint}")
        if isinstance(exc, (o.APIConnectionError, o.APIResponseValidationError, MalformedResponse,
                            json.JSONDecodeError)):
            return None
        return LLMError(f"unexpected error from {self.url}: {_describe(exc)}")

    def _once(self, messages: list[dict], temperature: float) -> Reply:
        s = self.settings
        extra = {} if s.seed is None else {"seed": s.seed}
        start = time.perf_counter()
        response = self.client.chat.completions.create(
            model=s.model, messages=messages, temperature=temperature, max_tokens=s.max_tokens,
            **extra)
        choices = getattr(response, "choices", None)
        if not choices or choices[0].message is None or not isinstance(choices[0].message.content, str):
            raise MalformedResponse(f"a response without a message text: {str(response)[:300]}")
        usage = response.usage.model_dump() if getattr(response, "usage", None) else {}
        return Reply(choices[0].message.content, response.model or s.model,
                     choices[0].finish_reason, {k: v for k, v in usage.items()
                                                if isinstance(v, (int, float))},
                     time.perf_counter() - start)

    def ask(self, messages: list[dict], temperature: float | None = None) -> Reply:
        s = self.settings
        temperature = s.temperature if temperature is None else temperature
        last: BaseException | None = None
        for attempt in range(s.max_retries + 1):
            try:
                return self._once(messages, temperature)
            except Exception as exc:  # classified below: fatal, or retried
                fatal = self._fatal(exc)
                if fatal is not None:
                    raise fatal from None
                last = exc
                if attempt == s.max_retries:
                    break
                delay = self._delay(attempt, exc)
                self.retries += 1
                self.log.warning("%s: %s; retry %d of %d in %.2f s", self.url, _describe(exc),
                                 attempt + 1, s.max_retries, delay)
                self.sleep(delay)
        raise LLMError(
            f"{self.url}: gave up after {s.max_retries + 1} attempts (1 + config key "
            f"{s.key('max_retries')} = {s.max_retries} retries; timeout {s.key('timeout')} = "
            f"{s.timeout} s). Last error: {_describe(last)}. Answers received so far are cached; "
            f"rerun once the server is healthy.")

    def run(self, items: list[tuple[str, list[dict]]], done: Callable[[str, Reply], None],
            temperature: float) -> None:
        """Ask every (key, messages) with at most ``concurrency`` requests in flight. ``done`` runs
        (one call at a time) in the worker that got the answer, before that worker sends its next
        request: a run killed mid-way has cached every answer it had received. The first error
        cancels what has not started and is raised once the requests in flight have ended (their
        answers are kept)."""
        workers = max(1, min(self.settings.concurrency, len(items)))
        record = threading.Lock()
        error: BaseException | None = None

        def ask_and_record(key: str, messages: list[dict]) -> None:
            reply = self.ask(messages, temperature)
            with record:
                done(key, reply)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
            remaining = {pool.submit(ask_and_record, key, messages) for key, messages in items}
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled() or future.exception() is None:
                        continue
                    if error is None:
                        error = future.exception()
                        for other in remaining:
                            other.cancel()
        if error is not None:
            raise error


# --- local -------------------------------------------------------------------------------------


class LocalBackend:
    """A transformers causal LM answering chat messages; greedy (temperature 0) in batches, or
    sampled one request at a time with a seed derived from the request, so a sampled answer does
    not depend on which other requests happen to share its batch."""

    name = "local"

    def __init__(self, model, tokenizer, spec, model_id: str, settings: LLMSettings,
                 log: logging.Logger = LOG):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.model_id = model_id
        self.settings = settings
        self.log = log

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from .prompts import prompt_ids

        if self.spec.chat_template:
            messages = list(messages)
            if self.spec.system_prompt is not None and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.spec.system_prompt})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
        else:  # a base model: the messages as plain text, then an answer cue
            text = "\n\n".join(m["content"] for m in messages) + "\nAnswer:"
        return prompt_ids(self.tokenizer, text, self.spec.chat_template)

    def _generate(self, prompts: list[list[int]], temperature: float = 0.0,
                  seed: int | None = None) -> list[list[int]]:
        """New token ids after each prompt: one left-padded batch, greedy, or sampled at
        ``temperature`` from ``seed``. (evaluate.generate returns text only; usage needs the
        token counts.)"""
        import torch

        s = self.settings
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        sampling = {"do_sample": False, "num_beams": 1}
        if temperature > 0:
            torch.manual_seed(seed or 0)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=s.max_tokens, pad_token_id=pad,
                                      eos_token_id=eos, **sampling)
        new = []
        for row in out[:, width:].tolist():
            while row and row[-1] == pad:  # finished rows are padded to the longest
                row.pop()
            new.append(row)
        return new

    def run(self, items: list[tuple[str, list[dict]]], done: Callable[[str, Reply], None],
            temperature: float) -> None:
        s = self.settings
        size = max(1, s.batch_size)
        for start in range(0, len(items), size):
            batch = items[start:start + size]
            prompts = [self.prompt_ids(messages) for _, messages in batch]
            began = time.perf_counter()
            if temperature > 0:  # one at a time, each seeded from its own request
                outs = [self._generate([p], temperature,
                                       (int(key[:12], 16) + (s.seed or 0)) % 2 ** 63)[0]
                        for p, (key, _) in zip(prompts, batch)]
            else:
                outs = self._generate(prompts)
            seconds = (time.perf_counter() - began) / len(batch)
            for (key, _), prompt, new in zip(batch, prompts, outs):
                text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
                done(key, Reply(text, self.model_id,
                                "length" if len(new) >= s.max_tokens else "stop",
                                {"prompt_tokens": len(prompt), "completion_tokens": len(new)},
                                seconds))
            self.log.info("local %s: %d of %d answered", self.model_id,
                          min(start + size, len(items)), len(items))


# The registry settings that change what a local model answers (its prompt and its numerics).
ANSWER_SETTINGS = ("chat_template", "system_prompt", "dtype", "pad_token")


def local_model_id(name: str, start_patch: str | None, spec_params: dict | None = None) -> str:
    """The local model's identity in cache keys: its name, the digest of its answer-shaping
    registry settings (a new system prompt must not replay the old prompt's answers), and the
    digest of the fine-tuning patch it starts from (a fine-tuned model answers differently)."""
    settings = {k: (spec_params or {}).get(k) for k in ANSWER_SETTINGS}
    blob = json.dumps(settings, sort_keys=True).encode("utf-8")
    model_id = f"{name}@{hashlib.sha256(blob).hexdigest()[:8]}"
    if start_patch:
        from .data import sha256_of

        model_id += f"+{sha256_of(start_patch)[:16]}"
    return model_id


def make_llm(settings: LLMSettings, log: logging.Logger = LOG, *, model_dir: str | None = None,
             spec_params: dict | None = None, device: str = "auto",
             start_patch: str | None = None, sleep: Callable[[float], None] = time.sleep) -> LLM:
    """An LLM for a job. ``local`` needs the model folder and its registry settings
    (``spec_params``), and the fine-tuning patch where the model under study starts from one."""
    if settings.backend not in BACKENDS:
        raise LLMError(f"config key {settings.key('backend')}: unknown backend "
                       f"{settings.backend!r} (known: {', '.join(BACKENDS)})")
    cache = ResponseCache(settings.cache_dir) if settings.cache_dir else None
    if settings.backend == "openai":
        backend = OpenAIBackend(settings, log, sleep=sleep)
    else:
        if model_dir is None or spec_params is None:
            raise LLMError(f"the local backend needs the folder of model {settings.model!r}")
        from .pipeline import load_for_job

        spec, model, tokenizer = load_for_job(spec_params, model_dir, device, start_patch)
        backend = LocalBackend(model, tokenizer, spec, local_model_id(spec.name, start_patch, spec_params),
                               settings, log)
    llm = LLM(backend, settings, cache, log)
    log.info("LLM %s, %s", llm.name, asdict(settings))
    return llm
