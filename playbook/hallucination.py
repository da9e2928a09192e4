"""Finding hallucinations: fact-checking an answer against a table, the knowledge quadrants on SelfAware, and
uncertainty as a warning sign.

A hallucination is output that is not grounded in the model's training data or in the input it was given. Three
ways of catching one, each small enough to read:

- **fact check** (`fact_check`): compare each claim about a known entity with a ground-truth table, field by field;
- **self-knowledge** (`expresses_uncertainty`, `knowledge_quadrants`, `unanswerable_f1`): does the model say "I
  don't know" to questions nobody can answer (SelfAware, Yin et al. 2023) and answer the ones it can?
- **uncertainty** (`answer_confidence`, `answer_token_mask`): are wrong answers generated with lower token
  probabilities? (AUROC with its interval: `playbook.stats.auroc_interval`.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.data import BUNDLED_DATA_DIR
from playbook.io import read_json, read_jsonl
from playbook.judge import WINDOW, abstains
from playbook.models import chat_batches
from playbook.tensors import entropy_from_logits, logprobs_from_logits

FACT_TABLE = BUNDLED_DATA_DIR / "uganda_tokyo2020_medallists.json"
FACTUAL_PROBES = BUNDLED_DATA_DIR / "factual_probes.jsonl"
NAME_FILTER_WORDS = BUNDLED_DATA_DIR / "name_filter_words.json"

# ---------------------------------------------------------------------------------------------- fact checking

_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_DATE_PATTERNS = [
    re.compile(rf"\b{_DAY}(?: of)? {_MONTH},? {_YEAR}\b", re.IGNORECASE),  # 12 September 1996
    re.compile(rf"\b{_MONTH} {_DAY},? {_YEAR}\b", re.IGNORECASE),  # September 12, 1996
    re.compile(r"\b(?P<year>(?:19|20)\d\d)-(?P<month>[01]\d)-(?P<day>[0-3]\d)\b"),  # 1996-09-12
    re.compile(rf"\b{_MONTH},? {_YEAR}\b", re.IGNORECASE),  # September 1996
    re.compile(rf"\bborn (?:in |on )?{_YEAR}\b", re.IGNORECASE),  # born in 1996
]
_MEDAL = re.compile(r"\b(gold|silver|bronze)\b", re.IGNORECASE)
_EVENTS = (
    ("3000 m steeplechase", re.compile(r"steeple ?chase", re.IGNORECASE)),
    ("10,000 m", re.compile(r"\b10[, ]?000 ?(?:m\b|metre|meter)|\b10 ?km\b|\b10k\b", re.IGNORECASE)),
    ("5000 m", re.compile(r"\b5[, ]?000 ?(?:m\b|metre|meter)|\b5 ?km\b|\b5k\b", re.IGNORECASE)),
)


@dataclass(frozen=True)
class PartialDate:
    """A date as stated in text: any of day and month may be missing ("born in 1996")."""

    year: int
    month: int | None = None
    day: int | None = None

    def agrees_with(self, iso_date: str) -> bool:
        """True when every part that was stated matches the ISO date (YYYY-MM-DD)."""
        year, month, day = (int(part) for part in iso_date.split("-"))
        return (
            self.year == year and (self.month is None or self.month == month) and (self.day is None or self.day == day)
        )

    def __str__(self) -> str:
        return "-".join(f"{part:02d}" for part in (self.year, self.month, self.day) if part is not None)


def find_dates(text: str) -> list[PartialDate]:
    """Dates in `text`, in order of appearance: "12 September 1996", "Sept. 12, 1996", "1996-09-12",
    "September 1996", "born in 1996". Slash dates are skipped: 03/04/1999 is ambiguous."""
    found: list[tuple[int, int, PartialDate]] = []
    taken: list[range] = []
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            if any(match.start() in span for span in taken):
                continue
            parts = match.groupdict()
            month = parts.get("month")
            month_number = None if month is None else (int(month) if month.isdigit() else _MONTHS[month.lower()])
            day = int(parts["day"]) if parts.get("day") else None
            if day is not None and not 1 <= day <= 31:
                continue
            found.append((match.start(), match.end(), PartialDate(int(parts["year"]), month_number, day)))
            taken.append(range(match.start(), match.end()))
    return [date for _, _, date in sorted(found, key=lambda item: item[0])]


@dataclass(frozen=True)
class FactTable:
    """Ground truth for a fact-checking demo: the question asked and, per athlete, birth date and medals."""

    question: str
    athletes: list[dict]
    source: Path

    @property
    def gold_medallists(self) -> list[str]:
        return [a["name"] for a in self.athletes if any(m["medal"] == "gold" for m in a["medals"])]


def load_fact_table(path: str | Path = FACT_TABLE) -> FactTable:
    """Read a fact table like `data/uganda_tokyo2020_medallists.json`; errors name the file and the field."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object with 'question' and 'athletes'.")
    for key in ("question", "athletes"):
        if key not in record:
            raise ValueError(f"{path}: missing field {key!r}")
    for number, athlete in enumerate(record["athletes"], start=1):
        missing = {"name", "born", "medals"} - set(athlete)
        if missing:
            raise ValueError(f"{path}: athlete {number} lacks {sorted(missing)}")
    return FactTable(record["question"], record["athletes"], path)


def _mentions(text: str, athlete: dict) -> list[int]:
    names = [athlete["name"], *athlete.get("aliases", [])]
    pattern = re.compile("|".join(rf"\b{re.escape(name)}\b" for name in names), re.IGNORECASE)
    return [match.start() for match in pattern.finditer(text)]


def _status(stated: Sequence[str], expected: Sequence[str]) -> str:
    if not stated:
        return "missing"
    return "correct" if all(value in expected for value in stated) else "wrong"


def fact_check(answer: str, table: FactTable) -> pd.DataFrame:
    """Check an answer field by field against the table: one row per athlete, with what the answer states about
    medal, event and birth date, what is true, and a status per field: correct, wrong or missing.

    Claims are attributed to an athlete from the first mention of their name up to the next mention of another
    athlete (so "Cheptegei, born 12 September 1996, won gold" is read as one claim). `claimed_gold` records whether
    the answer lists the athlete among the gold medallists the question asks for, and `gold_status` judges that.
    """
    starts = sorted((positions[0], a["name"]) for a in table.athletes if (positions := _mentions(answer, a)))
    segments = {
        name: answer[start : starts[i + 1][0] if i + 1 < len(starts) else len(answer)]
        for i, (start, name) in enumerate(starts)
    }
    rows = []
    for athlete in table.athletes:
        segment = segments.get(athlete["name"])
        true_medals = sorted({m["medal"] for m in athlete["medals"]})
        true_events = sorted({e for m in athlete["medals"] for e, pattern in _EVENTS if pattern.search(m["event"])})
        is_gold = "gold" in true_medals
        if segment is None:
            rows.append(
                {
                    "athlete": athlete["name"],
                    "mentioned": False,
                    "claimed_gold": False,
                    "gold_status": "missing" if is_gold else "correct",
                    "medal_stated": "",
                    "medal_true": ", ".join(true_medals),
                    "medal_status": "missing",
                    "event_stated": "",
                    "event_true": ", ".join(true_events),
                    "event_status": "missing",
                    "born_stated": "",
                    "born_true": athlete["born"],
                    "born_status": "missing",
                }
            )
            continue
        medals = sorted({m.lower() for m in _MEDAL.findall(segment)})
        events = sorted({name for name, pattern in _EVENTS if pattern.search(segment)})
        dates = find_dates(segment)
        born_status = "missing" if not dates else ("correct" if dates[0].agrees_with(athlete["born"]) else "wrong")
        claimed_gold = "gold" in medals or not medals  # listed in an answer to "who won gold" without a medal
        rows.append(
            {
                "athlete": athlete["name"],
                "mentioned": True,
                "claimed_gold": claimed_gold,
                "gold_status": "correct" if claimed_gold == is_gold else "wrong",
                "medal_stated": ", ".join(medals),
                "medal_true": ", ".join(true_medals),
                "medal_status": _status(medals, true_medals),
                "event_stated": ", ".join(events),
                "event_true": ", ".join(true_events),
                "event_status": _status(events, true_events),
                "born_stated": str(dates[0]) if dates else "",
                "born_true": athlete["born"],
                "born_status": born_status,
            }
        )
    return pd.DataFrame(rows)


def fact_sheet(table: FactTable) -> str:
    """The table as short sentences, to put in a prompt: the grounded version of the same question."""
    lines = []
    for athlete in table.athletes:
        born = PartialDate(*(int(part) for part in athlete["born"].split("-")))
        medals = " and ".join(f"{m['medal']} in the {m['event']}" for m in athlete["medals"])
        lines.append(f"{athlete['name']} (born {born.day} {_MONTH_NAMES[born.month - 1]} {born.year}) won {medals}.")
    return " ".join(lines)


_MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip


def answer_summary(answer: str, table: FactTable) -> dict[str, object]:
    """One line per answer for a comparison table: which gold medallists it names, birth dates right and wrong,
    events wrong, non-gold medallists it presents as gold, and other people it names."""
    checked = fact_check(answer, table).set_index("athlete")
    gold = table.gold_medallists
    not_gold = [a["name"] for a in table.athletes if a["name"] not in gold]
    return {
        f"gold medallists named (of {len(gold)})": int(checked.loc[gold, "mentioned"].sum()),
        "birth dates right": int((checked["born_status"] == "correct").sum()),
        "birth dates wrong": int((checked["born_status"] == "wrong").sum()),
        "events wrong": int((checked["event_status"] == "wrong").sum()),
        "wrongly called gold": int(checked.loc[not_gold, "claimed_gold"].sum()),
        "other people named": ", ".join(other_names(answer, table)) or "-",
    }


@dataclass(frozen=True)
class NameFilter:
    """Words that rule a capitalised run of words out as a person's name, from `data/name_filter_words.json`:
    `not_person` (places, organisations, event and medal words) and `sentence_starters` (capitalised words that
    begin a sentence, dropped from the front of a run before it is judged)."""

    not_person: frozenset[str]
    sentence_starters: frozenset[str]


_NAME_FILTER_LISTS = ("places", "organisations", "events_and_medals", "sentence_starters")


def load_name_filter(path: str | Path = NAME_FILTER_WORDS) -> NameFilter:
    """Read the word lists of `other_names` (lower-case words per list); errors name the file and the list."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object with the lists {', '.join(_NAME_FILTER_LISTS)}.")
    for key in _NAME_FILTER_LISTS:
        words = record.get(key)
        if not isinstance(words, list) or not all(isinstance(w, str) and w == w.lower() for w in words):
            raise ValueError(f"{path}: {key!r} must be a list of lower-case words")
    return NameFilter(
        not_person=frozenset(record["places"])
        | frozenset(record["organisations"])
        | frozenset(record["events_and_medals"]),
        sentence_starters=frozenset(record["sentence_starters"]),
    )


def other_names(answer: str, table: FactTable, name_filter: NameFilter | None = None) -> list[str]:
    """Capitalised multi-word names in the answer that are not in the table: candidates for invented people.

    A heuristic (two or more capitalised words in a row, initials such as "B." allowed between them, none of the
    words a place, organisation, event or medal word from `name_filter`, by default `data/name_filter_words.json`);
    read the list, don't count on it.
    """
    name_filter = name_filter or load_name_filter()
    names_in_table = [name for a in table.athletes for name in [a["name"], *a.get("aliases", [])]]
    known = {part.lower() for name in names_in_table for part in name.split()}
    names = []
    word = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*"
    initial = r"[A-Z]\."
    for match in re.finditer(rf"\b{word}(?: (?:{initial} )*{word})+\b", answer):
        words = match.group(0).split()
        while words and words[0].lower() in name_filter.sentence_starters:
            words.pop(0)
        if len(words) < 2 or any(w.lower() in known or w.lower() in name_filter.not_person for w in words):
            continue
        if " ".join(words) not in names:
            names.append(" ".join(words))
    return names


# ---------------------------------------------------------------------------------------- self-knowledge (SelfAware)

UNCERTAINTY_PHRASES = (
    r"no (?:definitive|definite|clear|single|simple|universal|straightforward|one|exact|known|consensus) "
    r"(?:answer|way|consensus|agreement|explanation)",
    r"(?:it is|it's|it can be) (?:difficult|hard|impossible|challenging) to (?:say|know|determine|predict|answer|tell)",
    r"(?:difficult|hard|impossible) to (?:provide|give) (?:a |an )?(?:definitive|definite|clear|exact|accurate|single)",
    r"(?:a )?(?:topic|subject|matter|question) of (?:ongoing |much |great )?(?:debate|discussion|controversy)",
    r"(?:remains?|is still|are still) (?:a )?(?:mystery|unknown|unclear|debated|uncertain|unanswered|open)",
    r"(?:it|this|that|the answer) (?:depends|varies|can vary|may vary)",
    r"(?:is|are) (?:highly |largely |very )?subjective",
    r"a matter of (?:personal )?(?:opinion|preference|perspective|debate|interpretation)",
    r"(?:no one|nobody|scientists don't|we don't) (?:really |truly )?knows?",
    r"(?:has|have) (?:not|never) been (?:proven|determined|discovered|confirmed|established)",
    r"(?:is|are) (?:not|currently not) known",
)
"""Phrases that mark an answer as uncertain beyond the judge's hedges: the ways a model says a question has no
single answer. `expresses_uncertainty` looks for them, like the judge, in the first characters of the reply."""

_UNCERTAIN = re.compile("|".join(rf"\b(?:{p})\b" for p in UNCERTAINTY_PHRASES), re.IGNORECASE)


def expresses_uncertainty(reply: str) -> bool:
    """True when the reply abstains (the judge's hedges and refusals) or says the question has no sure answer."""
    text = " ".join(reply.replace("\u2019", "'").split())[:WINDOW]
    return abstains(reply) or bool(_UNCERTAIN.search(text))


QUADRANT_LABELS = {
    (True, False): "answerable, answered (correctness unchecked)",
    (True, True): "answerable, hedged",
    (False, True): "unanswerable, hedged (the right call)",
    (False, False): "unanswerable, answered (hallucination risk)",
}
"""Names of the 2×2 cells by (question answerable, model hedged), saying only what was measured: whether the model
committed to a reply. An answered answerable question is the chapter's "known known" only if the answer is right,
and a hedge on one is "too timid" only if the model knew the answer; neither is checked on SelfAware."""


def quadrant_label(answerable: bool, hedged: bool) -> str:
    """The quadrant of one reply, by whether its question is answerable and whether the model hedged."""
    return QUADRANT_LABELS[(bool(answerable), bool(hedged))]


def knowledge_quadrants(answerable: Sequence[bool], uncertain: Sequence[bool]) -> pd.DataFrame:
    """The 2×2 table of counts: rows answerable / unanswerable, columns model answers (right or wrong: not
    checked) / model hedges."""
    if len(answerable) != len(uncertain):
        raise ValueError(f"{len(answerable)} answerable flags for {len(uncertain)} replies")
    frame = pd.DataFrame({"question": answerable, "model": uncertain})
    table = pd.crosstab(frame["question"], frame["model"]).reindex(index=[True, False], columns=[False, True])
    table = table.fillna(0).astype(int)
    table.index = ["answerable", "unanswerable"]
    table.columns = ["answers (correctness unchecked)", "hedges"]
    return table


def unanswerable_f1(answerable: Sequence[bool], uncertain: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of "the model hedged" as a detector of unanswerable questions (SelfAware's metric:
    unanswerable is the positive class)."""
    if len(answerable) != len(uncertain):
        raise ValueError(f"{len(answerable)} answerable flags for {len(uncertain)} replies")
    positive = ~np.asarray(answerable, dtype=bool)
    predicted = np.asarray(uncertain, dtype=bool)
    hits = float((positive & predicted).sum())
    precision = hits / predicted.sum() if predicted.any() else 0.0
    recall = hits / positive.sum() if positive.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


SELFAWARE_REPORTED_F1 = {"human": 84.93, "GPT-4": 75.47}
"""F1 (%) for spotting unanswerable SelfAware questions, as reported by Yin et al. 2023."""


def balanced_sample(dataset, n: int, *, key: str = "answerable", seed: int = 0) -> list[dict]:
    """`n` rows, half with `key` true and half false (as far as each side allows), in a seeded random order."""
    rows = list(dataset)
    rng = np.random.default_rng(seed)
    sides = [[r for r in rows if r[key]], [r for r in rows if not r[key]]]
    want = [n - n // 2, n // 2]
    picked = []
    for side, count in zip(sides, want, strict=True):
        order = rng.permutation(len(side))[:count]
        picked += [side[i] for i in order]
    return [picked[i] for i in rng.permutation(len(picked))]


# ----------------------------------------------------------------------------------------- uncertainty as a signal


def load_factual_probes(path: str | Path = FACTUAL_PROBES) -> list[dict]:
    """Short factual questions with accepted answers (`{"question", "answers"}` per line)."""
    probes = []
    for number, record in read_jsonl(path):
        if not record.get("question") or not record.get("answers"):
            raise ValueError(f"{path}:{number}: needs a question and a non-empty answers list")
        probes.append(record)
    return probes


def is_correct(reply: str, answers: Sequence[str]) -> bool:
    """True when any accepted answer appears in the reply as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", reply, re.IGNORECASE) for a in answers)


_FIRST_SENTENCE_END = re.compile(r"(?<!\b[A-Z])[.!?](?=\s|$)|\n")  # "John F. Kennedy" goes on


def answer_token_mask(pieces: Sequence[str], question: str) -> np.ndarray:
    """Which tokens of a reply carry its answer, given the reply as token `pieces` (strings that join to the reply):
    those of the reply's first sentence that touch a content word, i.e. a word neither in the question nor an
    English stop word (scikit-learn's list).

    Why: a reply's mean confidence is mostly that of its boilerplate ("The capital of Brazil is ..." echoes the
    question, and the tokens after the first sentence are the model's elaboration), which is near-certain whether the
    answer is right or wrong. In "The capital of Brazil is Sao Paulo, a city ..." the answer tokens are those of "Sao
    Paulo" and "city". When the first sentence has no content word ("I don't know."), its tokens are used instead,
    and for an empty reply every token (the end-of-turn token).
    """
    text = "".join(pieces)
    end = _FIRST_SENTENCE_END.search(text)
    first_sentence_end = end.end() if end else len(text)
    question_words = {word.lower() for word in re.findall(r"\w+", question)}
    content = [
        match.span()
        for match in re.finditer(r"\w+", text[:first_sentence_end])
        if match.group(0).lower() not in question_words | ENGLISH_STOP_WORDS
    ]
    ends = np.cumsum([len(piece) for piece in pieces])
    starts = ends - np.array([len(piece) for piece in pieces], dtype=int)
    mask = np.array(
        [
            any(s < word_end and word_start < e for word_start, word_end in content)
            for s, e in zip(starts, ends, strict=True)
        ],
        dtype=bool,
    )
    if not mask.any():
        mask = (starts < first_sentence_end) & (ends > starts)
    if not mask.any():  # an empty reply: only the end-of-turn token
        mask = np.ones(len(pieces), dtype=bool)
    return mask


def _token_pieces(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded reply (special tokens add nothing). Decoding growing prefixes, not
    single tokens, keeps a character split across byte-level tokens whole: a token that ends mid-character adds ""
    and the next one adds the character."""
    pieces, decoded = [], ""
    for end in range(1, len(token_ids) + 1):
        prefix = tokenizer.decode(token_ids[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if prefix.endswith("\ufffd"):
            prefix = decoded
        pieces.append(prefix[len(decoded) :])
        decoded = prefix
    return pieces


@torch.no_grad()
def answer_confidence(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Answer each question greedily (chat template) and measure how sure the model was while answering.

    Two scopes: the whole reply (`mean_logprob`, `mean_entropy`: the mean log-probability of the tokens it chose
    and the mean entropy of its next-token distributions, over the reply's tokens up to and including the
    end-of-turn token) and the answer's words (`answer_logprob`, `answer_entropy`: the same means over the tokens
    `answer_token_mask` picks, `answer_text` being those tokens' text, see `scored_text`)."""
    rows = []
    for start, batch in chat_batches(
        tokenizer, [[{"role": "user", "content": q}] for q in questions], batch_size=batch_size, device=model.device
    ):
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = output.sequences[:, batch["input_ids"].shape[1] :]
        logits = torch.stack(output.logits, dim=1)  # [B, T, V]
        chosen, entropy = logprobs_from_logits(logits, new_tokens), entropy_from_logits(logits)
        for row in range(len(new_tokens)):
            question = questions[start + row]
            length = _reply_length(new_tokens[row], tokenizer.eos_token_id)
            pieces = _token_pieces(tokenizer, new_tokens[row, :length].tolist())
            answer = torch.from_numpy(answer_token_mask(pieces, question))
            rows.append(
                {
                    "question": question,
                    "reply": tokenizer.decode(new_tokens[row, :length], skip_special_tokens=True).strip(),
                    "mean_logprob": float(chosen[row, :length].mean()),
                    "mean_entropy": float(entropy[row, :length].mean()),
                    "tokens": length,
                    "answer_text": scored_text(pieces, answer.tolist()),
                    "answer_logprob": float(chosen[row, :length][answer].mean()),
                    "answer_entropy": float(entropy[row, :length][answer].mean()),
                    "answer_tokens": int(answer.sum()),
                }
            )
    return pd.DataFrame(rows)


def scored_text(pieces: Sequence[str], scored: Sequence[bool]) -> str:
    """The text of the scored tokens, each run of consecutive ones as it reads, runs joined by " … " where unscored
    tokens were left out: "126.125 Earths" with the "." unscored reads "126 … 125 Earths", not "126125 Earths". A
    token of white space alone (a tokenizer's lone " " before digits) keeps its place in a run, unscored or not."""
    runs, current = [], []
    for piece, keep in zip(pieces, scored, strict=True):
        if keep or (current and not piece.strip()):
            current.append(piece)
        elif current:
            runs.append("".join(current).strip())
            current = []
    if current:
        runs.append("".join(current).strip())
    return " … ".join(run for run in runs if run)


def _reply_length(tokens: torch.Tensor, eos_token_id: int | None) -> int:
    """Tokens up to and including the first end-of-sequence token (all of them if there is none)."""
    if eos_token_id is None:
        return len(tokens)
    ends = (tokens == eos_token_id).nonzero()
    return int(ends[0]) + 1 if len(ends) else len(tokens)


def plot_confidence(results: pd.DataFrame, ax=None, *, scope: str = "answer"):
    """Mean token log-probability vs mean entropy of each answer, coloured by correctness, over the answer's words
    (`scope="answer"`: the `answer_*` columns of `answer_confidence`) or the whole reply (`scope="reply"`)."""
    import matplotlib.pyplot as plt

    columns = {
        "answer": ("answer_entropy", "answer_logprob", "the answer's words"),
        "reply": ("mean_entropy", "mean_logprob", "the whole reply"),
    }
    if scope not in columns:
        raise ValueError(f"scope must be 'answer' or 'reply', got {scope!r}")
    entropy, logprob, over = columns[scope]
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for correct, colour, label in ((True, "tab:green", "correct"), (False, "tab:red", "wrong")):
        part = results[results["correct"] == correct]
        ax.scatter(part[entropy], part[logprob], c=colour, label=f"{label} ({len(part)})", alpha=0.7)
    ax.set_xlabel(f"mean entropy of next-token distribution (nats), over {over}")
    ax.set_ylabel(f"mean log-probability of chosen tokens,\nover {over}")
    ax.legend()
    ax.set_title("Are wrong answers generated less confidently?")
    ax.figure.tight_layout()
    return ax
