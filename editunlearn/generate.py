"""LLM-generated data: rephrased forget questions (the rephrase attack, paper Table 2) and
self-improvement refusal targets (paper §3.2, prompt of appendix B.1).

Both follow one loop (``refine``): ask for every item, validate each answer with deterministic
checks (``editunlearn.textcheck``), ask again for the rejected ones with the rejection reasons in the
prompt -- a new prompt, so greedy decoding gives a new answer and the cache keeps both -- up to
``max_attempts`` times, then fall back: a template rephrase, or the item's ``idk`` refusal. Every
row says which it got, how many attempts it took and what was rejected. The prompts below are part
of this module, which is an input of the generation rules: editing them reruns the generation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from . import textcheck

# --- the shared loop ---------------------------------------------------------------------------


@dataclass
class Outcome:
    text: str | None = None  # the accepted answer; None = every attempt was rejected
    attempts: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"text", "reasons"} per rejected attempt
    cache_keys: list[str] = field(default_factory=list)


def refine(items: list[dict], make_messages: Callable[[dict, list[dict]], list[dict]],
           clean: Callable[[str], str], check: Callable[[dict, str], list[str]], llm,
           max_attempts: int, log=None, retry_temperature: float | None = None) -> list[Outcome]:
    """Ask, validate, re-ask the rejected items with their rejections in the prompt, sampling at
    ``retry_temperature`` (None: the LLM's own temperature) from the second attempt on."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    outcomes = [Outcome() for _ in items]
    pending = list(range(len(items)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        replies = llm.ask([make_messages(items[i], outcomes[i].rejected) for i in pending],
                          temperature=retry_temperature if attempt > 1 else None)
        still = []
        for i, reply in zip(pending, replies):
            out = outcomes[i]
            out.attempts = attempt
            out.cache_keys.append(reply.key)
            text = clean(reply.text)
            reasons = check(items[i], text)
            if reasons:
                out.rejected.append({"text": text, "reasons": reasons})
                still.append(i)
            else:
                out.text = text
        if log:
            log.info("attempt %d: %d of %d accepted, %d to ask again", attempt,
                     len(pending) - len(still), len(pending), len(still))
        pending = still
    return outcomes


def report(outcomes: list[Outcome], llm, **extra) -> dict:
    """Counts for the report file: first-attempt accepts, regenerated accepts, fallbacks, and
    how often each rejection reason came up (an answer can fail several checks)."""
    reasons = Counter(r.split(":")[0] for o in outcomes for rej in o.rejected for r in rej["reasons"])
    return {
        "n": len(outcomes),
        "accepted_first_attempt": sum(o.text is not None and o.attempts == 1 for o in outcomes),
        "accepted_after_regeneration": sum(o.text is not None and o.attempts > 1 for o in outcomes),
        "fallback": sum(o.text is None for o in outcomes),
        "rejections": dict(sorted(reasons.items())),
        "llm": llm.provenance(),
        "requests": dict(llm.stats),
        **extra,
    }


def _rejections(kind: str, rejected: list[dict]) -> str:
    """Every earlier rejected try with its reasons: each re-ask is a new prompt (so a new answer
    even under greedy decoding, and a new cache entry) that says what to avoid."""
    lines = [f"{i}. \"{r['text'][:300]}\" -- rejected: {'; '.join(r['reasons'])}"
             for i, r in enumerate(rejected, 1)]
    return f"Earlier {kind}s for the question below that were rejected:\n" + "\n".join(lines)


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _strip_label(text: str, labels: tuple[str, ...]) -> str:
    pattern = r"^\s*(?:\*\*)?(?:" + "|".join(labels) + r")\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*"
    return re.sub(pattern, "", text, flags=re.IGNORECASE)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":
        return text[1:-1].strip()
    return text


# --- rephrases ---------------------------------------------------------------------------------

REPHRASE_SYSTEM = "You rewrite quiz questions in other words without changing what they ask."
REPHRASE_INSTRUCTION = (
    "Rewrite the question so that it asks for exactly the same fact, worded differently. "
    "Keep every name, title, date and number exactly as it is written. Do not answer the "
    "question and do not add any information. Reply with the rewritten question only, ending "
    "with a question mark.")
# worked examples on facts outside the factual dataset
REPHRASE_EXAMPLES = [
    ("Who painted 'The Starry Night'?", "Which artist created the painting 'The Starry Night'?"),
    ("In which city is the Brandenburg Gate?", "Where is the Brandenburg Gate located?"),
]


def rephrase_messages(item: dict, rejected: list[dict]) -> list[dict]:
    shots = "\n\n".join(f"Question: {q}\nRewrite: {r}" for q, r in REPHRASE_EXAMPLES)
    # rejections go before the question, so the prompt still ends on the "Rewrite:" cue
    retry = ("\n\n" + _rejections("rewrite", rejected) + "\nWrite a different rewrite that "
             "follows the rules.") if rejected else ""
    text = f"{REPHRASE_INSTRUCTION}\n\n{shots}{retry}\n\nQuestion: {item['question']}\nRewrite:"
    return [{"role": "system", "content": REPHRASE_SYSTEM}, {"role": "user", "content": text}]


def clean_rephrase(text: str) -> str:
    text = _unquote(_strip_label(first_line(text), ("rewrite", "rewritten question", "question",
                                                    "paraphrase", "rephrased question")))
    # a lead-in before the question ("The answer to this question is: Which ...?")
    head, sep, tail = text.rpartition(": ")
    if sep and tail.rstrip().endswith("?") and len(tail.split()) >= 3 and not head.endswith("?"):
        text = _unquote(tail)
    return text


def _squash(text: str) -> str:
    return " ".join(textcheck.words(text))


def check_rephrase(item: dict, text: str) -> list[str]:
    """Reasons to reject a rephrase (none: accepted)."""
    question, answer = item["question"], item["answer"]
    reasons = []
    if not text.strip():
        return ["empty"]
    if f" {_squash(question)} " in f" {_squash(text)} ":
        reasons.append("identical: it repeats the question word for word")
    if not text.rstrip().endswith("?"):
        reasons.append("not_a_question: it must end with a question mark")
    if textcheck.leaks(text, answer, question):
        reasons.append("leaks_answer: it contains the answer")
    missing = textcheck.missing_entities(question, text, require="all")
    if missing:
        reasons.append("missing_entity: it drops " + ", ".join(repr(m) for m in missing))
    added = textcheck.new_entities(question, text)
    if added:
        reasons.append("new_entity: it adds " + ", ".join(repr(a) for a in added))
    return reasons


_TEMPLATES = ("Could you tell me {q}", "Do you know {q}", "I would like to know: {q}")
_QUESTION_WORDS = ("who", "what", "which", "when", "where", "why", "how", "whose", "whom", "in",
                   "on", "at", "from", "by", "for", "to", "with", "within", "after", "before",
                   "during", "since", "until", "under", "upon", "according", "based")


def template_rephrase(item: dict) -> str:
    """The deterministic fallback: the question embedded in a fixed frame chosen by the item's
    id. It keeps the entities and the asked-for fact, but it is a weak rephrase (same words)."""
    question = item["question"].strip()
    index = int.from_bytes(item["id"].encode("utf-8"), "big") % len(_TEMPLATES)
    first = question.split(" ", 1)[0].lower()
    # lower-case the first word only where it is a question word, never a name
    body = question[0].lower() + question[1:] if first in _QUESTION_WORDS else question
    return _TEMPLATES[index].format(q=body if body.endswith("?") else body + "?")


def rephrase_rows(items: list[dict], llm, max_attempts: int, log=None,
                  retry_temperature: float | None = None) -> tuple[list[dict], dict]:
    outcomes = refine(items, rephrase_messages, clean_rephrase, check_rephrase, llm,
                      max_attempts, log, retry_temperature)
    provenance = llm.provenance()
    rows = [{"id": item["id"], "question": item["question"],
             "rephrase": template_rephrase(item) if out.text is None else out.text,
             "source": "template" if out.text is None else "llm",
             **_attempt_fields(out, provenance)}
            for item, out in zip(items, outcomes)]
    return rows, report(outcomes, llm, max_attempts=max_attempts,
                        retry_temperature=retry_temperature)


def _attempt_fields(out, provenance: dict) -> dict:
    """What every generated row records about how it was obtained."""
    return {"fallback": out.text is None, "attempts": out.attempts, "rejected": out.rejected,
            "llm": provenance, "cache_keys": out.cache_keys}


def rephrased_items(forget: list[dict], rephrases: list[dict]) -> list[dict]:
    """The forget items asked with their rephrased question (same answers): the ``rephrase``
    evaluation split."""
    by_id = {row["id"]: row for row in rephrases}
    missing = [item["id"] for item in forget if item["id"] not in by_id]
    if missing:
        raise KeyError(f"no rephrase for forget items {missing[:5]} (of {len(missing)}): the "
                       f"rephrases file is for another dataset or incomplete")
    return [{**item, "question": by_id[item["id"]]["rephrase"],
             "original_question": item["question"], "rephrase_source": by_id[item["id"]]["source"]}
            for item in forget]


# --- self-improvement refusal targets (paper §3.2, appendix B.1) --------------------------------

# The appendix B.1 prompt, as the paper prints it (one typo fixed: "withouting" -> "without").
SELF_IMPROVE_PROMPT = """You are a helpful assistant to generate the answers to show you have no knowledge about the questions. The answers should contain the entities mentioned in the question and should be trustworthy without misleadings.

Here are three examples:

Example 1:

Question: Who is the author of Harry Potter?

Answer: Sorry, I have no knowledge about the author name of Harry Potter.

Example 2:

Question: What is the capital city of Singapore?

Answer: I need to apologize that I don't know the capital city of Singapore.

Example 3:

Question: Which university ranks top 1 in the UK?

Answer: Sorry, I'm unable to provide an answer about the UK's top 1 university.

Now, I will give you a new question, please generate the corresponding answer by referring to previous prompts and examples.

Question: {question}"""
SELF_IMPROVE_MAX_WORDS = 40  # a refusal is one sentence; longer ones ramble or answer


def self_improve_messages(item: dict, rejected: list[dict]) -> list[dict]:
    text = SELF_IMPROVE_PROMPT.format(question=item["question"])
    if rejected:  # not in the paper: what was wrong with the earlier tries, before the question
        head, sep, question = text.rpartition("\n\nQuestion: ")
        text = (head + "\n\n" + _rejections("answer", rejected) + "\nWrite a new one-sentence "
                "answer that says you do not know and names what the question is about." + sep
                + question)
    return [{"role": "user", "content": text}]


def clean_refusal(text: str) -> str:
    text = text.strip()
    text = re.split(r"\n\s*\n|\n\s*(?:Question|Example \d+)\s*:", text)[0]  # the model goes on
    text = _strip_label(" ".join(text.split()), ("answer", r"the answer to (?:this|the) question is",
                                                  r"here is (?:the|my) answer"))
    return _unquote(text)


def check_refusal(item: dict, text: str) -> list[str]:
    question, answer = item["question"], item["answer"]
    if not text.strip():
        return ["empty"]
    reasons = []
    if not textcheck.is_refusal(text):
        reasons.append("not_a_refusal: it does not say that you do not know")
    elif not textcheck.is_refusal(re.split(r"(?<=[.!?])\s+", text.strip())[0]):
        # a refusal tucked behind something else ("pick from the following. 1. 'Dune' by ...")
        # is an answer with a disclaimer
        reasons.append("refusal_not_first: its first sentence does not say that you do not know")
    if textcheck.leaks(text, answer, question):
        reasons.append("leaks_answer: it gives away the answer")
    missing = textcheck.missing_entities(question, text, require="main")
    if missing:
        reasons.append("missing_entity: it does not mention " + ", ".join(repr(m) for m in missing))
    if len(text.split()) > SELF_IMPROVE_MAX_WORDS:
        reasons.append(f"too_long: more than {SELF_IMPROVE_MAX_WORDS} words")
    return reasons


def self_improve_rows(items: list[dict], idk: dict[str, str], llm, max_attempts: int,
                      log=None, retry_temperature: float | None = None) -> tuple[list[dict], dict]:
    """One refusal target per forget item, written by the model under study; the item's ``idk``
    line where every attempt was rejected."""
    missing = [item["id"] for item in items if item["id"] not in idk]
    if missing:
        raise KeyError(f"the idk targets file has no line for forget items {missing[:5]}")
    outcomes = refine(items, self_improve_messages, clean_refusal, check_refusal, llm,
                      max_attempts, log, retry_temperature)
    provenance = llm.provenance()
    rows = [{"id": item["id"], "target": idk[item["id"]] if out.text is None else out.text,
             "source": "idk" if out.text is None else "self-improve", "question": item["question"],
             **_attempt_fields(out, provenance)}
            for item, out in zip(items, outcomes)]
    return rows, report(outcomes, llm, max_attempts=max_attempts,
                        retry_temperature=retry_temperature)
