import json

import pytest
import torch

from playbook.hallucination import (
    FACT_TABLE,
    PartialDate,
    answer_confidence,
    answer_summary,
    answer_token_mask,
    balanced_sample,
    expresses_uncertainty,
    fact_check,
    fact_sheet,
    find_dates,
    is_correct,
    knowledge_quadrants,
    load_fact_table,
    load_factual_probes,
    load_name_filter,
    other_names,
    quadrant_label,
    scored_text,
    unanswerable_f1,
)


@pytest.fixture(scope="module")
def table():
    return load_fact_table()


def test_the_bundled_fact_table_holds_the_tokyo_2020_facts(table):
    assert table.gold_medallists == ["Joshua Cheptegei", "Peruth Chemutai"]
    born = {a["name"]: a["born"] for a in table.athletes}
    assert born == {"Joshua Cheptegei": "1996-09-12", "Peruth Chemutai": "1999-07-10", "Jacob Kiplimo": "2000-11-14"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("born on 12 September 1996 in Kapchorwa", PartialDate(1996, 9, 12)),
        ("born Sept. 12, 1996", PartialDate(1996, 9, 12)),
        ("(1999-07-10)", PartialDate(1999, 7, 10)),
        ("born on the 10th of July 1999", PartialDate(1999, 7, 10)),
        ("born in November 2000", PartialDate(2000, 11)),
        ("born in 2000", PartialDate(2000)),
    ],
)
def test_find_dates_reads_common_formats(text, expected):
    assert find_dates(text) == [expected]


def test_find_dates_keeps_order_and_skips_ambiguous_slashes():
    assert find_dates("03/04/1999") == []
    assert [str(d) for d in find_dates("July 10, 1999 and 1996-09-12")] == ["1999-07-10", "1996-09-12"]
    assert PartialDate(2000, 11).agrees_with("2000-11-14")
    assert not PartialDate(2000, 11, 15).agrees_with("2000-11-14")


def statuses(frame, field):
    return dict(zip(frame["athlete"], frame[f"{field}_status"], strict=True))


def test_fact_check_accepts_a_fully_correct_answer(table):
    answer = (
        "Uganda's gold medallists were Joshua Cheptegei, who won gold in the men's 5000 m and was born on "
        "12 September 1996, and Peruth Chemutai, gold in the 3000 m steeplechase, born 10 July 1999."
    )
    result = fact_check(answer, table)
    assert statuses(result, "born") == {
        "Joshua Cheptegei": "correct",
        "Peruth Chemutai": "correct",
        "Jacob Kiplimo": "missing",
    }
    assert set(result["gold_status"]) == {"correct"}
    assert statuses(result, "event")["Peruth Chemutai"] == "correct"


def test_fact_check_catches_a_wrong_medal_date_and_event(table):
    answer = (
        "Jacob Kiplimo won gold in the marathon and the 5,000 metres; he was born on 1 January 1998. "
        "Cheptegei won silver in the 10,000m."
    )
    result = fact_check(answer, table).set_index("athlete")
    kiplimo = result.loc["Jacob Kiplimo"]
    assert (kiplimo["gold_status"], kiplimo["medal_status"], kiplimo["born_status"]) == ("wrong", "wrong", "wrong")
    assert kiplimo["event_status"] == "wrong"
    cheptegei = result.loc["Joshua Cheptegei"]
    assert (cheptegei["medal_status"], cheptegei["event_status"], cheptegei["gold_status"]) == (
        "correct",
        "correct",
        "wrong",
    )
    assert result.loc["Peruth Chemutai", "gold_status"] == "missing"


def test_other_names_lists_people_not_in_the_table(table):
    answer = "Uganda's gold medallists at the Tokyo Olympics were John Akii-Bua and Joshua Cheptegei."
    assert other_names(answer, table) == ["John Akii-Bua"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The 2020 Olympics were held in London, United Kingdom, and in Rio de Janeiro.", []),
        ("The champions came from the Democratic Republic of Congo, said Kofi Annan.", ["Kofi Annan"]),
        ("He was played by Michael Jordan in the 2014 Disney Channel movie.", ["Michael Jordan"]),
        ("Reported by the Olympic Committee and New York Times, including Kioni Okamura.", ["Kioni Okamura"]),
        ("The winners were Michael B. Jackson and J. Smith.", ["Michael B. Jackson"]),
    ],
)
def test_other_names_leaves_out_places_and_organisations(table, answer, expected):
    assert other_names(answer, table) == expected


def test_the_name_filter_words_come_from_the_data_file(tmp_path):
    words = load_name_filter()
    assert {"united", "kingdom", "republic", "disney", "channel", "olympic"} <= words.not_person
    assert "kofi" not in words.not_person and "the" in words.sentence_starters
    lists = {"places": ["paris"], "organisations": ["club"], "events_and_medals": [], "sentence_starters": ["and"]}
    path = tmp_path / "words.json"
    path.write_text(json.dumps(lists), encoding="utf-8")
    assert load_name_filter(path).not_person == {"paris", "club"}
    path.write_text(json.dumps(lists | {"places": ["Paris"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"words\.json: 'places' must be a list of lower-case words"):
        load_name_filter(path)


BAD_HALLUCINATION_FILES = {
    "factual probes not UTF-8": (
        "probes.jsonl",
        b'{"question": "Q?", "answers": ["a"]}\n{"question": "caf\xe9"}\n',
        load_factual_probes,
        r"probes\.jsonl:2: not UTF-8 text .*re-save the file as UTF-8",
    ),
    "factual probe without answers": (
        "probes.jsonl",
        b'{"question": "Q?", "answers": []}\n',
        load_factual_probes,
        r"probes\.jsonl:1: needs a question and a non-empty answers list",
    ),
    "fact table not UTF-8": (
        "facts.json",
        b'{"question": "q",\n "athletes": ["\xe9"]}',
        load_fact_table,
        r"facts\.json:2: not UTF-8 text",
    ),
    "fact table not an object": ("facts.json", b"[]", load_fact_table, r"facts\.json: expected a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_HALLUCINATION_FILES))
def test_bad_hallucination_files_name_the_file_and_line(case, tmp_path):
    name, data, load, message = BAD_HALLUCINATION_FILES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        load(tmp_path / name)


def test_load_fact_table_names_the_file_and_field(tmp_path):
    broken = tmp_path / "facts.json"
    broken.write_text('{"question": "q",\n "athletes": [ {"name": "A"} ]}')
    with pytest.raises(ValueError, match=r"facts.json: athlete 1 lacks \['born', 'medals'\]"):
        load_fact_table(broken)
    broken.write_text('{"question": \n oops}')
    with pytest.raises(ValueError, match=r"facts.json:2"):
        load_fact_table(broken)
    assert json.loads(FACT_TABLE.read_text())["athletes"]


@pytest.mark.parametrize(
    ("reply", "uncertain"),
    [
        ("I don't know who will win.", True),
        ("There is no definitive answer to this question.", True),
        ("While it's impossible to provide a definitive answer, some say yes.", True),
        ("It depends on your point of view.", True),
        ("Beauty is highly subjective.", True),
        ("The origin of the universe remains a mystery.", True),
        ("I can't help with that.", True),
        ("Paris is the capital of France.", False),
        ("Water boils at 100 degrees Celsius at sea level; I know this well.", False),
    ],
)
def test_expresses_uncertainty(reply, uncertain):
    assert expresses_uncertainty(reply) is uncertain


def test_quadrants_and_f1_on_a_hand_made_case():
    answerable = [True, True, True, False, False, False, False]
    hedged = [False, False, True, True, True, False, False]
    table = knowledge_quadrants(answerable, hedged)
    assert table.loc["answerable"].tolist() == [2, 1]
    assert table.loc["unanswerable"].tolist() == [2, 2]
    scores = unanswerable_f1(answerable, hedged)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert unanswerable_f1([True], [False])["f1"] == 0.0
    with pytest.raises(ValueError, match="answerable flags"):
        knowledge_quadrants([True], [True, False])


def test_quadrant_labels_say_only_what_was_measured():
    assert quadrant_label(True, False) == "answerable, answered (correctness unchecked)"
    assert quadrant_label(False, False) == "unanswerable, answered (hallucination risk)"
    assert quadrant_label(False, True) == "unanswerable, hedged (the right call)"
    assert quadrant_label(True, True) == "answerable, hedged"
    assert knowledge_quadrants([True], [False]).columns.tolist() == ["answers (correctness unchecked)", "hedges"]


def test_balanced_sample_is_balanced_and_seeded():
    rows = [{"answerable": i % 3 != 0, "id": i} for i in range(30)]
    sample = balanced_sample(rows, 10, seed=1)
    assert sum(r["answerable"] for r in sample) == 5
    assert len({r["id"] for r in sample}) == 10
    assert sample == balanced_sample(rows, 10, seed=1)


def test_is_correct_matches_whole_words_only():
    assert is_correct("The capital is Canberra.", ["Canberra"])
    assert is_correct("It has 8 legs", ["eight", "8"])
    assert not is_correct("It has 18 legs", ["8"])
    assert not is_correct("Australia's capital is Sydney", ["Canberra"])


def _kept(pieces, question):
    return [piece for piece, keep in zip(pieces, answer_token_mask(pieces, question), strict=True) if keep]


def test_answer_tokens_are_the_first_sentences_new_content_words():
    pieces = [
        "The",
        " capital",
        " of",
        " Brazil",
        " is",
        " Sao",
        " Paulo",
        ",",
        " a",
        " city",
        ".",
        " It",
        " is",
        " big",
    ]
    assert _kept(pieces, "What is the capital of Brazil?") == [" Sao", " Paulo", " city"]
    decimal = ["The", " root", " of", " 144", " is", " about", " 14", ".", "4", ".", " Indeed", " so"]
    assert _kept(decimal, "What is the square root of 144?") == [" 14", "4"]  # "14.4" does not end the sentence
    assert _kept(["Paris", "\n", "France"], "What is the capital of France?") == ["Paris"]
    initial = ["It", " was", " John", " F", ".", " Kennedy", ".", " He", " won"]
    assert _kept(initial, "Who was the first President?") == [" John", " F", " Kennedy"]


def test_answer_tokens_fall_back_to_the_first_sentence_then_the_whole_reply():
    assert _kept(["It", " is", " the", " one", ".", " Rome"], "Which one?") == ["It", " is", " the", " one", "."]
    assert answer_token_mask([""], "Which one?").tolist() == [True]


def test_factual_probes_have_answers():
    probes = load_factual_probes()
    assert len(probes) == 40 and all(p["answers"] for p in probes)


@pytest.mark.slow
def test_answer_confidence_is_the_mean_log_probability_of_the_reply(embedded):
    model, tokenizer = embedded
    result = answer_confidence(model, tokenizer, ["What is the capital of France?", "Who are you?"], max_new_tokens=12)
    assert (result["mean_logprob"] <= 0).all() and (result["mean_entropy"] >= 0).all()
    row = result.iloc[0]
    assert "Paris" in row["reply"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": row["question"]}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    reply_ids = model.generate(prompt_ids, max_new_tokens=12, do_sample=False)[0, prompt_ids.shape[1] :].cpu()
    reply_ids = reply_ids[: row["tokens"]]
    full = torch.cat([prompt_ids[0].cpu(), reply_ids])[None]
    with torch.no_grad():
        logprobs = model(full.to(model.device)).logits[0, prompt_ids.shape[1] - 1 : -1].log_softmax(-1).cpu()
    expected = logprobs[range(len(reply_ids)), reply_ids].mean()
    assert row["mean_logprob"] == pytest.approx(float(expected), abs=1e-3)
    prefixes = [tokenizer.decode(reply_ids[:end], skip_special_tokens=True) for end in range(len(reply_ids) + 1)]
    pieces = [text[len(previous) :] for previous, text in zip(prefixes, prefixes[1:], strict=False)]
    answer = answer_token_mask(pieces, row["question"])  # the end-of-turn token adds no text
    assert "Paris" in row["answer_text"] and row["answer_tokens"] == answer.sum()
    expected_answer = logprobs[range(len(reply_ids)), reply_ids][torch.from_numpy(answer)].mean()
    assert row["answer_logprob"] == pytest.approx(float(expected_answer), abs=1e-3)


def test_fact_sheet_passes_its_own_fact_check(table):
    sheet = fact_sheet(table)
    assert "Joshua Cheptegei (born 12 September 1996) won gold in the men's 5000 m" in sheet
    result = fact_check(sheet, table)
    assert set(result["born_status"]) == {"correct"}
    assert set(result["medal_status"]) == {"correct"} and set(result["event_status"]) == {"correct"}
    summary = answer_summary(sheet, table)
    assert summary["gold medallists named (of 2)"] == 2 and summary["birth dates right"] == 3
    assert summary["wrongly called gold"] == 0 and summary["other people named"] == "-"
    assert summary["events wrong"] == 0
    assert answer_summary("Jacob Kiplimo won bronze in the steeplechase.", table)["events wrong"] == 1


def test_answer_summary_counts_a_bronze_medallist_called_gold(table):
    summary = answer_summary("The gold medallist was Jacob Kiplimo, born 14 November 2000. Also Kofi Annan.", table)
    assert summary["wrongly called gold"] == 1
    assert summary["birth dates right"] == 1
    assert summary["other people named"] == "Kofi Annan"


def test_scored_text_marks_where_unscored_tokens_were_left_out():
    # the decimal point unscored: two runs, not one number "126125"
    pieces = ["There", " are", " ", "1", "2", "6", ".", "1", "2", "5", " Earth", "s", "."]
    scored = [0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0]
    assert scored_text(pieces, scored) == "126 … 125 Earths"
    # a lone space token between a scored word and scored digits keeps the words apart without breaking the run
    pieces = [" is", " approximately", " ", "1", "4", ".", "4", "."]
    assert scored_text(pieces, [0, 1, 0, 1, 1, 0, 1, 0]) == "approximately 14 … 4"
    assert scored_text([" Paris", "."], [1, 0]) == "Paris"
    assert scored_text(["a", " b"], [0, 0]) == ""
