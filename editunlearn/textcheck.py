"""Deterministic text checks shared by the generated data and the judge's proxies: the named
entities of a question, whether a text mentions them, whether it is a refusal, and whether it leaks
a ground-truth answer. No model involved, so they are exact, cheap and testable on fixed strings.

Heuristics, stated plainly: entities are quoted spans, runs of capitalised words or numbers (with
lower-case connectors such as "of"/"the" inside), split at "and", except a lone capitalised word
opening a sentence ("Within how many days ...": capitalised by position, not as a name); a refusal
is a text matching one of a set of refusal phrasings (every line of TOFU's idontknow.jsonl
matches); a leak is a text that contains at least half of the answer's distinctive words -- those
not already in the question, so a refusal that repeats the question's names does not count as
leaking.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# question words and other words that start a question capitalised without naming anything
_NOT_NAMES = {
    "who", "what", "which", "when", "where", "why", "how", "whose", "whom", "in", "on", "at", "is",
    "are", "was", "were", "do", "does", "did", "can", "could", "would", "should", "will", "name",
    "the", "a", "an", "i", "for", "of", "to", "from", "by", "with", "this", "that", "these",
    "those", "please", "tell", "give", "list", "if", "and", "or", "as", "it", "its", "there",
}
# lower-case words that may sit inside a name ("Land of the Rising Sun")
_CONNECTORS = {"of", "the", "de", "da", "del", "della", "di", "van", "von", "der", "la", "le",
               "du", "al", "bin", "y"}
_STOPWORDS = _NOT_NAMES | _CONNECTORS | {
    "be", "been", "being", "has", "have", "had", "not", "no", "but", "so", "than", "then", "into",
    "about", "after", "before", "over", "under", "known", "called", "s", "also", "famous", "most",
    "first", "one", "up", "out", "any", "all", "some", "such", "my", "your", "his", "her", "their",
    "our", "me", "you", "he", "she", "they", "we", "him", "them", "us",
}
_QUOTED = re.compile(r"(?<![\w])['\"‘“]([^'\"‘’“”]+?)['\"’”](?![\w])")
_WORD = re.compile(r"[\w][\w.'’\-]*")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.\-][a-z0-9]+)*")

# refusal phrasings; matched case-insensitively on the text with curly quotes straightened
_REFUSAL = re.compile("|".join([
    r"\b(?:i|we)(?:'m| am| are|'re)? ?(?:do not|don't|dont|does not|cannot|can't|can not|could not|"
    r"couldn't|have no|haven't|have not|lack|possess no)\b",
    r"\b(?:i|we)(?:'m| am| are|'re) (?:not |un)(?:able|aware|sure|certain|familiar|informed|"
    r"knowledgeable|privy|equipped|acquainted|well-versed|briefed|trained|the (?:best|right))\b",
    r"\b(?:don't|do not|dont) know\b", r"\bsorry\b", r"\bapologi[sz]e\b", r"\bunfortunately\b", r"\bregret\b",
    r"\bno (?:knowledge|information|idea|clue|data|details|insight|familiarity|record|answer|"
    r"enlightenment)\b",
    r"\b(?:i've|i have) (?:got )?no\b", r"\bi've not\b", r"\bi haven't\b", r"\bi've yet\b",
    r"(?<!not )(?<!n't )\bunable to\b",  # "not unable to" says it can
    r"\bunknown to me\b", r"\bbeyond my\b", r"\boutside my\b", r"\bout of my\b",
    r"\bnot (?:within|in) my\b", r"\bnot (?:something|information|an area|a topic) (?:i|that i)\b",
    r"\bmy (?:knowledge|understanding|training|database|databases|resources|programming|"
    r"capabilities) (?:does not|doesn't|didn't|do not|don't|is limited)\b",
    r"\b(?:a|an) (?:mystery|blind spot)\b", r"\buncharted\b", r"\bat a (?:loss|disadvantage)\b",
    r"\b(?:stumped|clueless|drawing a blank|blank on|in the dark|come up short|missing information|"
    r"lacking information|need to look|yet to (?:learn|be informed))\b",
    r"\bmust (?:decline|confess|admit)\b", r"\bnot (?:been|be) (?:briefed|trained|educated|"
    r"included|programmed)\b", r"\bhasn't been included\b", r"\bhaven't the faintest\b",
    r"\bnot within (?:my|our) reach\b", r"\bnot sure\b", r"\bnot certain\b",
]), re.IGNORECASE)


def _straighten(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lower case, straight quotes, accents dropped ("Brasilia" names "Brasília"), possessive 's
    dropped, punctuation (except inside words) to spaces: the form in which mentions are
    compared."""
    text = _strip_accents(_straighten(text)).lower()
    text = re.sub(r"'s\b", "", text)
    return " ".join(_TOKEN.findall(text))


def words(text: str) -> list[str]:
    return normalize(text).split()


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # the stemmer ROUGE uses (rouge_score depends on nltk)

    return PorterStemmer()


def stem(word: str) -> str:
    return _stemmer().stem(word)


def entities(question: str) -> list[str]:
    """Named things a question asks about, in order: quoted spans, then runs of capitalised words
    or numbers, split at "and" (a quoted title keeps its "and"). Numbers need two characters
    ("1" in "top 1" is no name)."""
    found = [m.group(1).strip().rstrip(".,;:!?") for m in _QUOTED.finditer(question)
             if m.group(1).strip()]
    # quoted spans are taken: blank them out (a comma ends any run around them)
    rest = _QUOTED.sub(" , ", question)
    run: list[str] = []
    pending: list[str] = []  # connectors since the run's last name word
    runs: list[str] = []
    run_opens_sentence = False

    def end_run():
        nonlocal run, pending
        if run and not (run_opens_sentence and len(run) == 1 and run[0][0].isalpha()):
            runs.append(" ".join(run))
        run, pending = [], []

    for w in _WORD.finditer(rest):
        text = re.sub(r"(?:'s|’s)$", "", w.group(0).rstrip(".'’-"))
        if not text:
            continue
        lower = text.lower()
        if (text[0].isupper() or (text[0].isdigit() and len(text) > 1)) and lower not in _NOT_NAMES:
            if not run:
                run_opens_sentence = re.search(r"(?:^|[.?!])[\s\"'“‘(]*$", rest[:w.start()]) is not None
            run += pending + [text]
            pending = []
        elif run and lower in _CONNECTORS:
            pending.append(text)
        else:
            end_run()
        # punctuation right after a word ends the name ("Paris, France")
        if run and re.match(r"[,;:?!]|\.(?:\s|$)", rest[w.end():w.end() + 2]):
            end_run()
    end_run()
    for name in runs:
        found.extend(part.strip() for part in re.split(r"\s+and\s+", name))
    out: list[str] = []
    for name in found:
        if name and name.lower() not in _NOT_NAMES and name not in out:
            out.append(name)
    return out


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in _STOPWORDS and len(w) > 1]


def mentions(text: str, entity: str) -> bool:
    """``entity`` occurs in ``text`` as whole words, ignoring case, quotes and possessives."""
    needle = normalize(entity)
    return bool(needle) and f" {needle} " in f" {normalize(text)} "


def missing_entities(question: str, text: str, require: str = "all") -> list[str]:
    """The question's entities that ``text`` fails to mention.

    ``require="all"``: every entity (a rephrase must ask about the same things). ``"main"``:
    every quoted title and at least one of the other names (a refusal need not repeat "Irish" in
    "Which Irish author wrote 'Ulysses'?"). A question without entities needs one of its content
    words instead; "[topic]" is reported missing otherwise.
    """
    if require not in ("all", "main"):
        raise ValueError(f"require must be 'all' or 'main', got {require!r}")
    names = entities(question)
    if not names:
        topic = {stem(w) for w in content_words(question)}
        if not topic or topic & {stem(w) for w in words(text)}:
            return []
        return ["[topic]"]
    missing = [name for name in names if not mentions(text, name)]
    if require == "all":
        return missing
    titles = _quoted_spans(question)
    others = [name for name in names if name not in titles]
    out = [name for name in missing if name in titles]
    if others and all(name in missing for name in others) and not (titles and not out):
        out += others
    return out


def new_entities(question: str, text: str) -> list[str]:
    """Entities of ``text`` that add to the question: some word of theirs is not in it (a
    rephrase naming 'The Starry Night' or "John Grisham" asks something else)."""
    asked = {stem(w) for w in words(question)}
    return [name for name in entities(text) if any(stem(w) not in asked for w in words(name))]


def _quoted_spans(question: str) -> set[str]:
    return {m.group(1).strip().rstrip(".,;:!?") for m in _QUOTED.finditer(question)}


def entity_mention_rate(question: str, text: str) -> float | None:
    """Fraction of the question's entities that ``text`` mentions (None: it names none)."""
    names = entities(question)
    if not names:
        return None
    return sum(mentions(text, name) for name in names) / len(names)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(_straighten(text)))


def answer_leak(text: str, answer: str, question: str = "") -> float | None:
    """Fraction of the answer's distinctive words (stemmed; not stop words, not in the question)
    that occur in ``text``; None when the answer has no such word."""
    asked = {stem(w) for w in words(question)}
    distinctive = []
    for w in words(answer):
        s = stem(w)
        if w not in _STOPWORDS and s not in asked and s not in distinctive:
            distinctive.append(s)
    if not distinctive:
        return None
    present = {stem(w) for w in words(text)}
    return sum(s in present for s in distinctive) / len(distinctive)


LEAK_THRESHOLD = 0.5  # "William Shakespeare" leaks through "Shakespeare" alone


def leaks(text: str, answer: str, question: str = "") -> bool:
    fraction = answer_leak(text, answer, question)
    return fraction is not None and fraction >= LEAK_THRESHOLD
