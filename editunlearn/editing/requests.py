"""Edit requests from QA items: which prompt is edited, towards which target, keyed on which token.

The prompt is the chat-formatted question exactly as evaluation formats it (``PromptFormatter``),
the target is the item's refusal answer, and the key token -- where ROME/MEMIT read the MLP key
and insert the new value -- is chosen by two hyper-parameters:

``subject`` (the text the edit is "about"):
  ``question``  the whole question (EasyEdit's use in the paper); its last token is the final '?'.
  ``content``   the question without trailing punctuation: the last word of the question.
  ``entity``    a heuristic named entity: the last quoted span ('Dune'), else the last run of
                capitalised words or numbers ("Jzrcws SA and Ecxk Avfj"); falls back to ``content``.
``fact_token`` (EasyEdit's name): ``subject_last`` (the subject's last token) or ``prompt_last``
  (the last token of the whole chat prompt, as GRACE keys).

Why not the whole question: its last token is '?' and the chat template's tail follows it, so
keys there look alike across questions; sequential refusal edits keyed on '?' made unrelated
retain questions refuse too (DESIGN §4). A key on the question's own words differs per question.

Query merging (paper §3.2): ``merge_items`` joins m forget questions into one request with one
shared refusal target (the first item's); evaluation still asks each question on its own. The
merged request's key comes from ``merged_subject`` (default ``question``: the merged prompt's
final token, as the paper edits it). That is deliberate: one edit can only make the m questions,
asked alone, refuse through a key they share -- the final '?' and template tail -- whereas an
entity key would cover only the last question of the group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .stats import document_start_id

SUBJECTS = ("question", "content", "entity")
FACT_TOKENS = ("subject_last", "prompt_last")
MERGE_SEPARATOR = " "

# words that start a question capitalised without naming anything
_NON_ENTITY = {
    "who", "what", "which", "when", "where", "why", "how", "whose", "whom", "in", "on", "at", "is",
    "are", "was", "were", "do", "does", "did", "can", "could", "name", "the", "a", "an", "i", "for",
    "of", "to", "from", "by", "with", "this", "that", "these", "those", "please", "tell", "give",
    "list", "if", "and", "or",
}
# lower-case words that may sit inside a name ("Pride and Prejudice", "Leo of Tolstoy")
_CONNECTORS = {"of", "and", "the", "de", "da", "del", "della", "di", "van", "von", "der", "la",
               "le", "du", "&", "y", "al", "bin"}
_WORD = re.compile(r"[\w][\w.'’\-]*")
_QUOTED = re.compile(r"(?<![\w])['\"‘“]([^'\"‘’“”]+?)['\"’”](?![\w])")
_TRAILING = "?!.,;: \t\n'\"’”)"


@dataclass
class Request:
    """One edit: a question (possibly several merged) and its refusal target."""

    question: str  # the user message content
    target: str
    subject_span: tuple[int, int]  # character span of the subject inside ``question``
    item_ids: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.question[self.subject_span[0]:self.subject_span[1]]


@dataclass
class Context:
    """One tokenised variant of a request's prompt: an optional prefix + the question."""

    input_ids: list[int]
    lookup: int  # index of the key token in input_ids


def content_span(question: str) -> tuple[int, int]:
    end = len(question.rstrip(_TRAILING))
    start = len(question) - len(question.lstrip())
    if end <= start:
        raise ValueError(f"question {question!r} has no content to key an edit on")
    return start, end


def entity_span(question: str) -> tuple[int, int]:
    """The last quoted span, else the last run of capitalised words/numbers (lower-case
    connectors allowed inside); the question's content when there is none."""
    quoted = [m for m in _QUOTED.finditer(question) if m.group(1).strip()]
    if quoted:
        m = quoted[-1]
        inner = m.group(1)
        start = m.start(1) + len(inner) - len(inner.lstrip())
        end = m.start(1) + len(inner.rstrip(_TRAILING.replace("'", "")))
        if end > start:
            return start, end
    words = list(_WORD.finditer(question))
    runs: list[tuple[int, int]] = []
    run: list[re.Match] = []
    pending: list[re.Match] = []  # connectors seen since the run's last name word

    def close():
        if run:
            runs.append((run[0].start(), run[-1].end()))

    for i, w in enumerate(words):
        text = w.group(0).rstrip(".'’-")
        if not text:
            continue
        sentence_start = i == 0 or question[:w.start()].rstrip().endswith(("?", ".", "!"))
        name_like = (text[0].isupper() or text[0].isdigit()) and not (
            text.lower() in _NON_ENTITY and (sentence_start or text[0].isupper()))
        if name_like:
            if run and pending:
                run.extend(pending)
            elif not run:
                pass
            pending = []
            run.append(w)
        elif run and text.lower() in _CONNECTORS:
            pending.append(w)
        else:
            close()
            run, pending = [], []
    close()
    if not runs:
        return content_span(question)
    start, end = runs[-1]
    end = start + len(question[start:end].rstrip(_TRAILING))
    return start, end


def subject_span(question: str, subject: str) -> tuple[int, int]:
    if subject == "question":
        start = len(question) - len(question.lstrip())
        return start, len(question.rstrip())
    if subject == "content":
        return content_span(question)
    if subject == "entity":
        return entity_span(question)
    raise ValueError(f"hyper-parameter 'subject' must be one of {', '.join(SUBJECTS)}, got {subject!r}")


def merge_items(items: list[dict], merge: int) -> list[list[dict]]:
    """Consecutive groups of ``merge`` items (the last group may be smaller)."""
    if merge < 1:
        raise ValueError(f"query merging needs merge >= 1, got {merge}")
    return [items[i:i + merge] for i in range(0, len(items), merge)]


def build_requests(items: list[dict], subject: str, merge: int = 1,
                   merged_subject: str | None = None) -> list[Request]:
    """One request per group of ``merge`` forget items: their questions joined by a space, the
    first item's refusal target shared by all. With merge > 1 the subject is ``merged_subject``
    (default: ``subject``)."""
    if merge > 1 and merged_subject is not None:
        subject = merged_subject
    requests = []
    for group in merge_items(items, merge):
        missing = [it.get("id", "?") for it in group if not it.get("target")]
        if missing:
            raise ValueError(f"forget item(s) {missing} have no refusal 'target' to edit towards")
        questions = [it["question"].strip() for it in group]
        question = MERGE_SEPARATOR.join(questions)
        if subject == "question":
            span = subject_span(question, subject)
        else:  # the last question's content or entity (a name in an earlier one ends sooner)
            offset = len(question) - len(questions[-1])
            start, end = subject_span(questions[-1], subject)
            span = (start + offset, end + offset)
        requests.append(Request(question, group[0]["target"], span, [it.get("id", "") for it in group]))
    return requests


def _token_at(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the token covering character ``char`` (the last such token)."""
    hit = None
    for i, (start, end) in enumerate(offsets):
        if start <= char < end:
            hit = i
    if hit is None:  # some tokenizers report offsets without the leading space: nearest before
        before = [i for i, (start, end) in enumerate(offsets) if end <= char + 1 and end > start]
        if not before:
            raise ValueError(f"no token covers character {char}")
        hit = before[-1]
    return hit


def tokenize_context(formatter, request: Request, fact_token: str, prefix: str = "") -> Context:
    """The chat prompt of ``prefix + question`` tokenised as evaluation does, and the key index."""
    if fact_token not in FACT_TOKENS:
        raise ValueError(f"hyper-parameter 'fact_token' must be one of {', '.join(FACT_TOKENS)}, "
                         f"got {fact_token!r}")
    content = prefix + request.question
    prompt = formatter(content)
    tokenizer = formatter.tokenizer
    enc = tokenizer(prompt, add_special_tokens=not formatter.chat_template,
                    return_offsets_mapping=True)
    ids = enc["input_ids"]
    if fact_token == "prompt_last":
        return Context(ids, len(ids) - 1)
    where = prompt.rfind(content)
    if where < 0:
        raise ValueError(f"the chat template changed the question text, so the subject cannot be "
                         f"located in the prompt: {prompt!r}")
    char = where + len(prefix) + request.subject_span[1] - 1
    return Context(ids, _token_at(enc["offset_mapping"], char))


def kl_prompt(tokenizer, request: Request) -> Context:
    """ROME's essence prompt "{subject} is a" (plain text): the edit should not change what the
    model says about the subject in general."""
    text = f"{request.subject} is a"
    enc = tokenizer(text, return_offsets_mapping=True)
    return Context(enc["input_ids"], _token_at(enc["offset_mapping"], len(request.subject) - 1))


def sample_prefixes(model, tokenizer, length_params: list, seed: int) -> list[str]:
    """ROME's context templates: short texts sampled from the model, put before the question
    (inside the user message) so the edit also holds after other text. ``length_params`` is
    EasyEdit's ``context_template_length_params``: [[tokens, count], ...]. Always includes the
    empty prefix (the bare question)."""
    prefixes = [""]
    if not length_params:
        return prefixes
    device = next(model.parameters()).device
    start = document_start_id(tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for pair in length_params:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(x, int) and x > 0 for x in pair)):
                raise ValueError(f"hyper-parameter 'context_template_length_params' must be a list "
                                 f"of [tokens, count] pairs of positive integers, got {length_params!r}")
            length, count = pair
            ids = torch.full((count, 1), start, dtype=torch.long, device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     do_sample=True, top_k=5, max_new_tokens=length,
                                     min_new_tokens=length, pad_token_id=start)
            for row in out[:, 1:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                text = " ".join(text.replace("{", " ").replace("}", " ").split())
                prefixes.append(f"{text}. " if text else "")
    finally:
        torch.random.set_rng_state(generator_state)
    return prefixes
