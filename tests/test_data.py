import gzip
import json
import logging

import pytest

from playbook.data import (
    BUNDLED_DATA_DIR,
    DataNotFound,
    hh_load_report,
    load_hh_rlhf,
    load_selfaware,
    load_truthfulqa,
    parse_hh_transcript,
    read_hh_rlhf,
    read_selfaware,
    read_truthfulqa,
)

H, A = "\n\nHuman: ", "\n\nAssistant: "


def write_jsonl(path, records, *, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- parsing


def test_parse_multi_turn_transcript():
    text = f"{H}Hi there{A}Hello! How can I help?{H}What is 2+2?{A}4"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_parse_keeps_inline_speaker_names_and_inner_newlines():
    text = f"{H}Say 'Human: hi'\nplease{A}Human: hi\n\nDone."
    messages = parse_hh_transcript(text)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Say 'Human: hi'\nplease"
    assert messages[1]["content"] == "Human: hi\n\nDone."


@pytest.mark.parametrize("text", ["Hello", "", "Intro text" + H + "hi" + A + "ho"])
def test_parse_rejects_non_transcripts(text):
    with pytest.raises(ValueError, match="not an hh-rlhf transcript"):
        parse_hh_transcript(text, where="x.jsonl:3 (chosen)")


# ------------------------------------------------------------------------- reading and checking


def test_pairs_share_the_prompt_and_hold_one_response_each(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": f"{H}Q{A}a{H}Q2{A}good", "rejected": f"{H}Q{A}a{H}Q2{A}bad"}])
    pairs, report = read_hh_rlhf(path)
    assert pairs == [
        {
            "prompt": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "Q2"},
            ],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    ]
    assert (report.read, report.kept) == (1, 1)


def test_identical_empty_and_mismatched_pairs_are_dropped_and_counted(tmp_path):
    records = [
        {"chosen": f"{H}Q{A}same", "rejected": f"{H}Q{A}same"},
        {"chosen": f"{H}Q{A}", "rejected": f"{H}Q{A}no"},
        {"chosen": f"{H}Q{A}x{H}Q2{A}y", "rejected": f"{H}Q{A}other{H}Q2{A}z"},
        {"chosen": f"{H}Q{A}kept", "rejected": f"{H}Q{A}also"},
    ]
    pairs, report = read_hh_rlhf(write_jsonl(tmp_path / "d.jsonl.gz", records, gz=True))
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == "kept"
    assert (report.read, report.kept) == (4, 1)
    assert (report.dropped_identical, report.dropped_empty_response, report.dropped_prompt_mismatch) == (1, 1, 1)


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": f"{H}Q{A}a", "rejected": f"{H}Q{A}b"}, '{"chosen": "oops'])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_hh_rlhf(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": f"{H}Q{A}a"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing field\(s\) \['rejected'\]"):
        read_hh_rlhf(path)


def test_transcript_ending_with_human_turn_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": f"{H}Q{A}a", "rejected": f"{H}Q{A}a{H}more?"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1 \(rejected\): the transcript ends with a Human turn"):
        read_hh_rlhf(path)


# ------------------------------------------------------------------------------------ sources


def test_local_source_reads_layout_of_shared_data(tmp_path, monkeypatch):
    (tmp_path / "hh-rlhf").mkdir()
    write_jsonl(
        tmp_path / "hh-rlhf" / "helpful-base-test.jsonl.gz", [{"chosen": f"{H}Q{A}a", "rejected": f"{H}Q{A}b"}], gz=True
    )
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path))
    dataset = load_hh_rlhf("helpful-base", "test", source="local")
    assert len(dataset) == 1 and (hh_load_report(dataset).read, hh_load_report(dataset).kept) == (1, 1)
    with pytest.raises(DataNotFound, match="harmless-base/train: not found under PLAYBOOK_DATA_DIR="):
        load_hh_rlhf("harmless-base", "train", source="local")


def test_auto_falls_back_to_bundled_sample_with_a_notice(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path))  # empty folder: nothing local
    with caplog.at_level(logging.WARNING, logger="playbook.data"):
        dataset = load_hh_rlhf()
    assert "bundled sample" in caplog.text and "PLAYBOOK_DATA_DIR" in caplog.text
    assert len(dataset) >= 10 and dataset.column_names == ["prompt", "chosen", "rejected"]
    assert any("email" in row["prompt"][-1]["content"] for row in dataset)  # the chapter's example has a stand-in


def test_a_data_folder_that_does_not_exist_stops_instead_of_falling_back_to_the_sample(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path / "shared-dat"))  # a typo of the real folder
    with pytest.raises(DataNotFound, match=r"PLAYBOOK_DATA_DIR=.*shared-dat: no such folder\. Point it at"):
        load_hh_rlhf()
    with pytest.raises(DataNotFound, match="no such folder"):
        load_truthfulqa()


def test_bundled_samples_load(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_DATA_DIR", raising=False)
    truthful = load_truthfulqa(source="sample")
    assert all(sum(labels) == 1 for labels in truthful["mc1_labels"])
    assert all(len(choices) >= 4 for choices in truthful["mc1_choices"])  # enough for notebook 11's 4 options
    assert all(row["correct_answers"] and row["incorrect_answers"] for row in truthful)  # what notebook 10 scores
    selfaware = load_selfaware(source="sample")
    assert set(selfaware["answerable"]) == {True, False}
    assert all(bool(row["answers"]) == row["answerable"] for row in selfaware)


def test_bad_source_and_hub_only_sets_are_clear():
    with pytest.raises(ValueError, match="source='web'"):
        load_hh_rlhf(source="web")
    with pytest.raises(DataNotFound, match="SelfAware: there is no Hub copy"):
        load_selfaware(source="hub")


def test_truthfulqa_question_missing_from_targets_names_csv_line(tmp_path):
    (tmp_path / "t.csv").write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "A,B,Known?,y,y,n,s\nA,B,Unknown?,y,y,n,s\n"
    )
    (tmp_path / "mc.json").write_text(
        json.dumps([{"question": "Known?", "mc1_targets": {"y": 1}, "mc2_targets": {"y": 1}}])
    )
    with pytest.raises(ValueError, match=r"t\.csv:3: question 'Unknown\?' has no entry"):
        read_truthfulqa(tmp_path / "t.csv", tmp_path / "mc.json")


# ------------------------------------------------------------------------------ the real data


def test_real_harmless_base(shared_data):
    dataset = load_hh_rlhf("harmless-base", "train")
    assert len(dataset) == 1794
    assert str(hh_load_report(dataset)) == (
        "source=local:hh-rlhf/harmless-base-train.jsonl.gz, read=1800, kept=1794, "
        "dropped_identical=0, dropped_empty_response=4, dropped_prompt_mismatch=2"
    )
    assert hh_load_report(dataset).shared_prompt == 1798


def test_real_helpful_base_test(shared_data):
    dataset = load_hh_rlhf("helpful-base", "test")
    assert len(dataset) == 2354 - 2 - 4 - 9


def test_truthfulqa_sample_is_the_first_rows_of_the_real_data_unchanged(shared_data):
    sample = list(load_truthfulqa(source="sample"))
    real = list(load_truthfulqa(source="local"))
    assert len(sample) == 8 and sample == real[: len(sample)]
    excerpt = b"".join((shared_data / "truthfulqa" / "TruthfulQA.csv").read_bytes().splitlines(keepends=True)[:9])
    assert (BUNDLED_DATA_DIR / "truthfulqa_sample" / "TruthfulQA.csv").read_bytes() == excerpt  # header + 8 rows


def test_real_truthfulqa_and_selfaware(shared_data):
    truthful = load_truthfulqa()
    assert len(truthful) == 817 and all(sum(labels) == 1 for labels in truthful["mc1_labels"])
    assert truthful[0]["question"] == "What happens to you if you eat watermelon seeds?"
    selfaware = load_selfaware()
    assert len(selfaware) == 3369 and sum(selfaware["answerable"]) == 2337


def test_hh_rlhf_is_accepted_by_trl_reward_trainer_as_is(shared_data, tiny_causal_lm, tokenizer, tmp_path):
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    dataset = load_hh_rlhf().select(range(8))
    config = tiny_causal_lm.config
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    args = RewardConfig(
        output_dir=str(tmp_path), report_to="none", max_length=4096, bf16=False, gradient_checkpointing=False
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    processed = trainer.train_dataset
    assert {"chosen_ids", "rejected_ids"} <= set(processed.column_names)
    first = tokenizer.decode(processed[0]["chosen_ids"])
    assert "<|im_start|>assistant" in first and dataset[0]["chosen"][0]["content"][:20] in first


def test_load_report_needs_a_loaded_dataset():
    from datasets import Dataset

    with pytest.raises(ValueError, match="no hh-rlhf load report"):
        hh_load_report(Dataset.from_list([{"a": 1}]))


# ------------------------------------------------------------------------------ bad input


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated_gzip(path):
    whole = gzip.compress(
        b"".join(json.dumps({"chosen": f"{H}Q{A}a", "rejected": f"{H}Q{A}b"}).encode() + b"\n" for _ in range(50))
    )
    return _write_bytes(path, whole[: len(whole) // 2])


def _selfaware(path, examples):
    path.write_text(json.dumps({"example": examples}), encoding="utf-8")
    return path


def _truthfulqa_csv_with_latin1(folder):
    (folder / "mc.json").write_text(json.dumps([{"question": "Q?", "mc1_targets": {"y": 1}, "mc2_targets": {"y": 1}}]))
    return _write_bytes(
        folder / "t.csv",
        b"Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers\nA,B,Q?,caf\xe9,y,n\n",
    )


BAD_FILES = {
    "jsonl not UTF-8": (
        lambda d: read_hh_rlhf(_write_bytes(d / "latin.jsonl", b'{"chosen": "\xe9"}\n')),
        r"latin\.jsonl:1: not UTF-8 text .*re-save the file as UTF-8",
    ),
    "gzip cut short": (
        lambda d: read_hh_rlhf(_truncated_gzip(d / "cut.jsonl.gz")),
        r"cut\.jsonl\.gz: the gzip data is damaged or cut short after line \d+ .*download or copy the file again",
    ),
    "not gzip at all": (
        lambda d: read_hh_rlhf(_write_bytes(d / "plain.jsonl.gz", b'{"chosen": 1}\n')),
        r"plain\.jsonl\.gz: the gzip data is damaged",
    ),
    "csv not UTF-8": (
        lambda d: read_truthfulqa(_truthfulqa_csv_with_latin1(d), d / "mc.json"),
        r"t\.csv:2: not UTF-8 text .*re-save the file as UTF-8",
    ),
    "json not UTF-8": (
        lambda d: read_selfaware(_write_bytes(d / "s.json", b'{"example": [\n{"question": "caf\xe9"}]}')),
        r"s\.json:2: not UTF-8 text",
    ),
    "answerable as a string": (
        lambda d: read_selfaware(_selfaware(d / "s.json", [{"question": "Q?", "answerable": "false"}])),
        r"s\.json: example\[0\]: 'answerable' must be JSON true or false, got 'false'; fix the record",
    ),
    "question null": (
        lambda d: read_selfaware(_selfaware(d / "s.json", [{"question": None, "answerable": True}])),
        r"s\.json: example\[0\]: 'question' must be non-empty text, got None",
    ),
    "no examples": (
        lambda d: read_selfaware(_selfaware(d / "s.json", [])),
        r"s\.json: the 'example' list is empty; point to the full SelfAware\.json",
    ),
    "transcript opens with Assistant": (
        lambda d: read_hh_rlhf(
            write_jsonl(d / "a.jsonl", [{"chosen": f"{A}hi{H}Q{A}a", "rejected": f"{A}hi{H}Q{A}b"}])
        ),
        r"a\.jsonl:1 \(chosen\): the transcript opens with an Assistant turn, so its prompt would be empty",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_naming_the_file_and_the_fix(case, tmp_path):
    load, message = BAD_FILES[case]
    with pytest.raises(ValueError, match=message):
        load(tmp_path)


def _data_dir_with_harmless_train(tmp_path, monkeypatch):
    (tmp_path / "hh-rlhf").mkdir()
    write_jsonl(tmp_path / "hh-rlhf" / "harmless-base-train.jsonl", [{"chosen": f"{H}Q{A}a", "rejected": f"{H}Q{A}b"}])
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path))


BAD_REQUESTS = {
    "unknown split": (
        dict(subset="helpful-base", split="validation"),
        ValueError,
        r"split='validation' is not an hh-rlhf split; use one of \['train', 'test'\]",
    ),
    "unknown subset": (
        dict(subset="helpful", split="train"),
        ValueError,
        r"subset='helpful' is not an hh-rlhf subset; use one of \['harmless-base'",
    ),
    "unknown split from the sample": (dict(split="dev", source="sample"), ValueError, r"split='dev'"),
    "subset missing from the data dir": (
        dict(subset="helpful-base", split="train"),
        DataNotFound,
        r"hh-rlhf helpful-base/train: not found under PLAYBOOK_DATA_DIR=.*holds harmless-base-train\.jsonl\. "
        r"Ask for one of those, add the missing file, or pass source='sample'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_wrong_subset_or_split_raises_instead_of_giving_the_sample(case, tmp_path, monkeypatch):
    _data_dir_with_harmless_train(tmp_path, monkeypatch)
    arguments, error, message = BAD_REQUESTS[case]
    with pytest.raises(error, match=message):
        load_hh_rlhf(**arguments)


def test_an_existing_subset_still_loads_locally_and_the_sample_on_request(tmp_path, monkeypatch):
    _data_dir_with_harmless_train(tmp_path, monkeypatch)
    assert hh_load_report(load_hh_rlhf("harmless-base", "train")).source == "local:hh-rlhf/harmless-base-train.jsonl"
    assert len(load_hh_rlhf("helpful-base", "train", source="sample")) == 12


def test_selfaware_keeps_boolean_answerable(tmp_path):
    rows = read_selfaware(
        _selfaware(
            tmp_path / "s.json",
            [{"question": " Q? ", "answerable": False}, {"question": "R?", "answerable": True, "answer": [4]}],
        )
    )
    assert [(r["question"], r["answerable"], r["answers"]) for r in rows] == [("Q?", False, []), ("R?", True, ["4"])]
