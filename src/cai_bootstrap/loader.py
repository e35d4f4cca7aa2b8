"""The one clean loader for base models and their tokenizers.

A base model must see exactly the text we give it. The first attempt at this method
let the tokenizer wrap prompts in a chat template, so the "base" model behaved like an
instruct model and every later number was meaningless. Everything here exists to make
that impossible and visible:

- templates are removed at load and ``apply_chat_template`` is replaced by a refusal (CG-01);
- there is one encode path, ``add_special_tokens=False``, BOS prepended explicitly where
  the family needs it (CG-02);
- every input is scanned for special/role tokens before any forward pass, by the encode
  path and by a forward pre-hook on the model itself (CG-03); the forbidden list is
  derived from the tokenizer: every special token, every added token the chat template
  uses (Qwen3's ``<think>`` and ``<tool_call>`` are not flagged special), and added tokens
  that look like role markup; tokens the model emits are flagged on its ``Generation``;
- the tokenizer's own special-token behaviour is diffed on the sentinel prompts (CG-04);
- the sentinel suite runs at every load (CG-05) and everything is recorded (CG-06).

No other module may call ``from_pretrained`` on tokenizers or models (CG-07).
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cai_bootstrap.decode_backends import DEFAULT_DECODE_BACKEND, check_backend, generate_kwargs
from cai_bootstrap.decode_backends import describe as describe_decode_backend
from cai_bootstrap.profiles import ModelProfile, detect_profile, get_profile
from cai_bootstrap.sampling import SAMPLER_NAME
from cai_bootstrap.sentinels import SENTINELS, evaluate_sentinels, raise_on_failure
from cai_bootstrap.stopping import STOP_MATCHER_NAME
from cai_bootstrap.weights import weights_fingerprint

LOADER_NAME = "cai_bootstrap.loader"
# Added tokens that look like chat/role markup are forbidden even when a tokenizer
# forgets to flag them as special.
_ROLE_TOKEN_RE = re.compile(
    r"^(<\|?(im_start|im_end|start_of_turn|end_of_turn|system|user|assistant|eot_id|start_header_id|end_header_id)\|?>"
    r"|\[/?INST\]|<</?SYS>>|<\|(system|user|assistant|end)\|>)$"
)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ContaminationError(RuntimeError):
    """An input or tokenizer would leak chat/role markup into a base-model prompt."""


@dataclass
class Generation:
    text: str
    n_tokens: int
    hit_limit: bool
    stopped_on_eos: bool
    token_ids: list[int] = field(default_factory=list, repr=False)
    # Forbidden tokens the model emitted (not the EOS that ended the row): the text is
    # decoded without them, so this is the only trace. Each: token, position (in
    # token_ids) and offset (in text, where the token was erased).
    special_tokens: list[dict] = field(default_factory=list)


def loader_version() -> str:
    from cai_bootstrap.provenance import git_info

    return git_info()["commit"]


def _source_path(source: str | os.PathLike) -> tuple[str, bool]:
    """Return (source, is_local). Path-looking sources must exist; others are hub ids."""
    s = str(source)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: a model source must be a folder (Hugging Face layout) or a hub id")
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p}: no config.json; not a Hugging Face model folder")
        return str(p.resolve()), True
    if not _HUB_ID_RE.match(s):
        raise FileNotFoundError(f"model path {s!r} does not exist; give an existing folder or a hub id like 'org/name'")
    return s, False


def _disable_templates(tokenizer) -> Any:
    """CG-01: strip every template and make template use an error rather than a silent wrap.

    Returns the removed template: its text names the markup CG-03 must forbid.
    """
    removed = tokenizer.chat_template
    tokenizer.chat_template = None
    if hasattr(tokenizer, "default_chat_template"):
        try:
            tokenizer.default_chat_template = None
        except (AttributeError, TypeError):
            pass

    def _refuse(*_a, **_k):
        raise ContaminationError("apply_chat_template is disabled on base-model tokenizers (CG-01)")

    tokenizer.apply_chat_template = _refuse
    return removed


def _template_texts(chat_template: Any) -> list[str]:
    """The text of a chat template as tokenizers store it: one string, a dict of named
    templates, or a list of ``{"name", "template"}`` entries."""
    if not chat_template:
        return []
    if isinstance(chat_template, str):
        return [chat_template]
    if isinstance(chat_template, dict):
        return [t for t in chat_template.values() if isinstance(t, str)]
    if isinstance(chat_template, (list, tuple)):
        return [e.get("template") for e in chat_template if isinstance(e, dict) and isinstance(e.get("template"), str)]
    return []


def forbidden_token_sources(tokenizer, chat_template: Any = None) -> dict[str, dict[int, str]]:
    """Why each token is forbidden: special, used by the chat template, or role-like by name.

    The template is the authority on what a chat model's markup is; a tokenizer may leave
    such tokens unflagged (Qwen3's ``<think>``, ``<tool_call>``), so flags alone miss them.
    It must be read before ``_disable_templates`` clears it.
    """
    special: dict[int, str] = {}
    for tid in getattr(tokenizer, "all_special_ids", []) or []:
        if tid is not None:
            special[int(tid)] = tokenizer.convert_ids_to_tokens(int(tid))
    templates = _template_texts(chat_template)
    from_template: dict[int, str] = {}
    role_like: dict[int, str] = {}
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        content = getattr(tok, "content", str(tok))
        if getattr(tok, "special", False):
            special[int(tid)] = content
        if any(_occurs_as_token(content, t) for t in templates):
            from_template[int(tid)] = content
        if _ROLE_TOKEN_RE.match(content):
            role_like[int(tid)] = content
    return {"special": special, "template": from_template, "role_regex": role_like}


def _occurs_as_token(content: str, template: str) -> bool:
    """``content`` is markup the template writes.

    Only tokens that look like markup count (bracket or bar characters, no surrounding
    whitespace): some tokenizers add whitespace runs or plain words as tokens, and a
    template's text contains those too, without their being chat markup.
    """
    looks_like_markup = content == content.strip() and bool(content) and any(c in content for c in "<>[]|")
    return looks_like_markup and content in template


def forbidden_token_ids(tokenizer, chat_template: Any = None) -> dict[int, str]:
    """Every token id a base-model input may not contain, mapped to its text (CG-03)."""
    ids: dict[int, str] = {}
    for found in forbidden_token_sources(tokenizer, chat_template).values():
        ids.update(found)
    return ids


def find_forbidden(ids: Sequence[int], forbidden: dict[int, str]) -> list[tuple[int, str]]:
    """(position, token text) of every forbidden id in ``ids``."""
    return [(pos, forbidden[int(t)]) for pos, t in enumerate(ids) if int(t) in forbidden]


def check_token_ids(
    ids: Sequence[int],
    forbidden: dict[int, str],
    *,
    bos_id: int | None,
    eos_id: int | None = None,
    allow_trailing_eos: bool = False,
) -> None:
    """CG-03: abort on any special token except one leading BOS (and, for training targets, one final EOS)."""
    n = len(ids)
    for pos, tid in enumerate(ids):
        tid = int(tid)
        if tid not in forbidden:
            continue
        if pos == 0 and bos_id is not None and tid == bos_id:
            continue
        if allow_trailing_eos and pos == n - 1 and eos_id is not None and tid == eos_id:
            continue
        raise ContaminationError(
            f"forbidden special token {forbidden[tid]!r} (id {tid}) at position {pos} of {n}: "
            "base-model inputs may contain no chat/role/special tokens except one leading BOS"
        )


DTYPES = ("float32", "bfloat16", "float16")


class ModelUnavailableError(ValueError):
    """A model named by a hub id cannot be fetched (no network, or no such model)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    profile: ModelProfile
    provenance: dict
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int
    forbidden_ids: dict[int, str]
    _token_texts: list[str] | None = field(default=None, repr=False, compare=False)
    # How the decoding loop runs (decode_backends.py); set through use_decode_backend, which records it.
    decode_backend: str = DEFAULT_DECODE_BACKEND
    # Per thread, the padding mask of the batch generate() is prefilling: with a static cache transformers
    # hands the forward a prepared (dict or 4-D) mask, and the forward guard reads padding from this one.
    _prefill: Any = field(default_factory=threading.local, repr=False, compare=False)

    # -- the one encode path (CG-02) -------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.profile.needs_bos:
            ids = [self.bos_token_id] + ids
        self.check_ids(ids)
        return ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts in one tokenizer call (the fast tokenizer batches in Rust); same rules, same checks."""
        if not texts:
            return []
        rows = [list(r) for r in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        if self.profile.needs_bos:
            rows = [[self.bos_token_id] + r for r in rows]
        for r in rows:
            self.check_ids(r)
        return rows

    def encode_continuation(self, text: str) -> list[int]:
        """Tokens of text that follows a prompt: never a BOS, still checked."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        check_token_ids(ids, self.forbidden_ids, bos_id=None)
        return ids

    def forbidden_tokens_in(self, text: str) -> list[str]:
        """Forbidden tokens that ``text`` would encode to, in order: a check that drops an
        item instead of aborting the run as ``encode`` does."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tok for _, tok in find_forbidden(ids, self.forbidden_ids)]

    def check_ids(self, ids: Sequence[int], *, allow_trailing_eos: bool = False, continuation: bool = False) -> None:
        """CG-03 on one row; ``continuation``: the row continues cached context, so not even a BOS may lead it."""
        check_token_ids(
            ids,
            self.forbidden_ids,
            bos_id=self.bos_token_id if self.profile.needs_bos and not continuation else None,
            eos_id=self.eos_token_id,
            allow_trailing_eos=allow_trailing_eos,
        )

    def pad_left(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                input_ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return input_ids, mask

    def encode_batch(self, texts: Sequence[str]):
        return self.pad_left(self.encode_many(texts))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def use_decode_backend(self, name: str) -> "LoadedModel":
        """Decode with ``name`` from now on (decode_backends.py), recorded in the load provenance."""
        self.decode_backend = check_backend(name, str(self.device))
        self.provenance.setdefault("generation", {})["decode_backend"] = describe_decode_backend(name)
        return self

    # -- generation -------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool | None = None,
        desc: str = "generate",
        stop_strings: Sequence[str] = (),
    ) -> list[Generation]:
        """Batched, left-padded generation; reproducible for a fixed seed and batch size.

        ``stop_strings`` end a row as soon as its text contains one (e.g. the blank line
        after a first paragraph), so a finished answer is not counted as a token-limit hit.
        """
        import torch
        from tqdm.auto import tqdm

        if not prompts:
            return []
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        encoded = self.encode_many(prompts)
        # Sort by length so batches waste little padding; restore order afterwards.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out: list[Generation | None] = [None] * len(prompts)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            repetition_penalty=repetition_penalty,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )
        from cai_bootstrap.stopping import TokenTextStop

        fast_stop = self._token_text_stops(stop_strings)
        if stop_strings and not fast_stop:
            kwargs.update(stop_strings=list(stop_strings), tokenizer=self.tokenizer)
        if do_sample:
            # Always explicit: left out, transformers would apply its own top_k (50) unrecorded.
            from cai_bootstrap.decoding import DEFAULT_TOP_K

            top_k = DEFAULT_TOP_K if top_k is None else top_k
            top_p = 1.0 if top_p is None else top_p
            temperature = 1.0 if temperature is None else temperature
            if top_k > 0:
                # Same distribution, drawn over the k kept tokens instead of the whole vocabulary (sampling.py).
                from transformers import LogitsProcessorList

                from cai_bootstrap.sampling import TopKTopPSampler

                sampler = TopKTopPSampler(temperature=temperature, top_k=top_k, top_p=top_p)
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                              logits_processor=LogitsProcessorList([sampler]))
            else:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs(self.decode_backend, longest_prompt=max(len(e) for e in encoded),
                                      max_new_tokens=max_new_tokens))
        show = progress if progress is not None else len(prompts) > batch_size
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show, dynamic_ncols=True)
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(order), batch_size)):
                idx = order[start : start + batch_size]
                input_ids, mask = self.pad_left([encoded[i] for i in idx])
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                torch.manual_seed(seed + b)
                if fast_stop:
                    from transformers import StoppingCriteriaList

                    stop = TokenTextStop.for_prompts(stop_strings, self.token_texts(), [encoded[i] for i in idx])
                    kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
                self._prefill.mask = mask
                try:
                    seq = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
                finally:
                    self._prefill.mask = None
                new = seq[:, input_ids.shape[1] :].tolist()
                for row, i in zip(new, idx):
                    out[i] = self._finish(row, max_new_tokens, stop_strings)
                bar.update(len(idx))
        bar.close()
        return [g for g in out if g is not None]

    def _finish(self, row: list[int], max_new_tokens: int, stop_strings: Sequence[str] = ()) -> Generation:
        stopped = self.eos_token_id in row
        ids = row[: row.index(self.eos_token_id)] if stopped else row
        stopped_on_string = False
        if not stopped and stop_strings:
            # A row that met a stop string is padded to the batch's length afterwards: find the
            # shortest prefix whose text holds a stop string; what follows is padding.
            from cai_bootstrap.stopping import first_stop

            if self._token_text_stops(stop_strings):
                end = first_stop(ids, self.token_texts(), stop_strings)
            else:
                end = next((e for e in range(1, len(ids) + 1)
                            if any(s in self.tokenizer.decode(ids[:e], skip_special_tokens=True) for s in stop_strings)), None)
            if end is not None:
                stopped_on_string = True
                ids = ids[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        emitted = [
            {"token": tok, "position": pos, "offset": len(self.tokenizer.decode(ids[:pos], skip_special_tokens=True))}
            for pos, tok in find_forbidden(ids, self.forbidden_ids)
        ]
        return Generation(
            text=text,
            n_tokens=len(ids),
            hit_limit=not stopped and not stopped_on_string and len(row) >= max_new_tokens,
            stopped_on_eos=stopped,
            token_ids=ids,
            special_tokens=emitted,
        )

    def _token_text_stops(self, stop_strings: Sequence[str]) -> bool:
        """Whether these stop strings are matched on token texts (stopping.py), else by transformers."""
        from cai_bootstrap.stopping import fast_path_applies

        return fast_path_applies(stop_strings) and self.token_texts() is not None

    def token_texts(self) -> list[str] | None:
        """Every token id's text alone, computed once per model; None when decoding is not their
        concatenation, and then stop strings go to transformers' criterion (stopping.py)."""
        if self._token_texts is None:
            from cai_bootstrap.stopping import token_texts

            self._token_texts = token_texts(self.tokenizer, self.vocab_rows()) or []
        return self._token_texts or None

    def vocab_rows(self) -> int | None:
        """How many token ids the model can produce (its output rows), None when not known."""
        head = self.model.get_output_embeddings() if self.model is not None else None
        weight = getattr(head, "weight", None)
        return int(weight.shape[0]) if weight is not None else getattr(getattr(self.model, "config", None), "vocab_size", None)

    def release(self) -> None:
        """Free the weights now (EV-07: never two models resident)."""
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def delta_check(tokenizer, profile: ModelProfile, bos_id: int | None, texts: Iterable[str]) -> dict:
    """CG-04: the tokenizer may add nothing but the recorded BOS, and must round-trip text."""
    checked = []
    for text in texts:
        plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        with_special = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        allowed = [plain]
        if bos_id is not None:
            allowed.append([bos_id] + plain)
        if with_special not in allowed:
            extra = [tokenizer.convert_ids_to_tokens(int(t)) for t in with_special if t not in plain] or with_special
            raise ContaminationError(
                f"delta check: tokenizing {text!r} with add_special_tokens=True adds {extra} beyond the recorded BOS; "
                "the tokenizer is configured to inject special tokens (fix its post-processor or config)"
            )
        round_trip = tokenizer.decode(plain, skip_special_tokens=False)
        if round_trip != text:
            raise ContaminationError(f"delta check: text round-trip changed {text!r} into {round_trip!r}")
        checked.append({"text": text, "n_tokens": len(plain), "added_with_special": len(with_special) - len(plain)})
    return {"ok": True, "checked": checked}


def _is_2d_tensor(value) -> bool:
    return callable(getattr(value, "dim", None)) and value.dim() == 2


def is_continuation_step(input_ids, kwargs: dict) -> bool:
    """Whether a forward pass continues cached context rather than starting from scratch.

    Decided from the tensors, not from keyword names (transformers renamed the cache
    keyword from ``past_key_values`` to ``cache`` in 5.24, and a name-based test broke):
    an attention mask longer than the input covers earlier, cached tokens; without a
    mask, a cache position past 0 or any cache object already holding tokens says the same.
    """
    n = int(input_ids.shape[-1])
    mask = kwargs.get("attention_mask")
    # Only a plain 2-D padding mask counts: a prepared 4-D mask is as long as a static cache
    # even on the prefill, so it says nothing about what was cached.
    if _is_2d_tensor(mask):
        return int(mask.shape[-1]) > n
    positions = kwargs.get("cache_position")
    if positions is not None and hasattr(positions, "numel") and positions.numel() > 0:
        return int(positions.reshape(-1)[0]) > 0
    for cache in _caches(kwargs):
        try:
            if int(cache.get_seq_length()) > 0:
                return True
        except (TypeError, ValueError, AttributeError, RuntimeError):
            continue
    return False


def _caches(kwargs: dict) -> list:
    """The KV cache objects among a forward's arguments, known by what they can do, not by keyword."""
    return [v for v in kwargs.values() if callable(getattr(v, "get_seq_length", None))]


def _install_forward_guard(lm: LoadedModel) -> None:
    """CG-03 at the model itself: a pre-hook checks every forward pass but one-token decoding steps.

    A decoding step carries the one token the model generated itself (an EOS, say, or the
    padding of a finished row), and what it continues was checked when it was prefilled, so
    it alone is not checked. Every other pass is: a prefill, and a pass of several tokens
    that continues a cache (a shared prefix's suffixes, or text appended after a cached
    prefix), where no token, not even a BOS, may be special. Padding is excluded through the
    mask; training batches (labels present) may end each row with one EOS.
    """

    import torch

    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return None
        if torch.compiler.is_compiling() and int(input_ids.shape[-1]) == 1 and _caches(kwargs):
            # One token per row continuing a cache, in a compiled graph: a decoding step. generate compiles
            # only those (decode_backends.py) and runs the prefill eagerly, where this guard checks it; reading
            # how much the cache holds would break the graph. Any other compiled pass goes on to the checks
            # below, whose host reads break the graph, so they run eagerly.
            return None
        n = int(input_ids.shape[-1])
        continuing = is_continuation_step(input_ids, kwargs)
        if continuing and n == 1:
            return None
        mask = kwargs.get("attention_mask")
        if continuing and _is_2d_tensor(mask):
            mask = mask[:, -n:]  # the new tokens' part of a mask that also covers the cache
        elif not _is_2d_tensor(mask):
            # A prepared (4-D or dict) mask says nothing simple about padding: use the padding mask of
            # the batch generate() is prefilling when it fits, else check every token.
            known = getattr(lm._prefill, "mask", None)
            mask = known if known is not None and tuple(known.shape) == tuple(input_ids.shape) else None
        training = kwargs.get("labels") is not None
        for r in range(input_ids.shape[0]):
            row = input_ids[r]
            if mask is not None:
                row = row[mask[r].bool()]
            lm.check_ids(row.tolist(), allow_trailing_eos=training, continuation=continuing)
        return None

    lm.model.register_forward_pre_hook(hook, with_kwargs=True)


def _token_id(tokenizer, token: str | None) -> int | None:
    if token is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(tid)


def _resolve_ids(tokenizer, profile: ModelProfile) -> tuple[int | None, int]:
    bos_id = None
    if profile.needs_bos:
        bos_id = _token_id(tokenizer, profile.bos_token) if profile.bos_token else tokenizer.bos_token_id
        if bos_id is None:
            bos_id = tokenizer.bos_token_id
        if bos_id is None:
            raise ContaminationError(f"profile {profile.name!r} needs a BOS token but the tokenizer has none")
    eos_id = _token_id(tokenizer, profile.eos_token) if profile.eos_token else None
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer defines no EOS token; training could not teach the model to stop")
    return bos_id, int(eos_id)


def _resolve(source: str | os.PathLike, profile: str | ModelProfile | None):
    """Built-in names (``gemma-3-270m``, ``tiny-random``) and .gguf files go through the model
    registry, so every entry point accepts what the README names; folders and hub ids pass."""
    from cai_bootstrap.model_sources import resolve_model

    resolved = resolve_model(source, profile=profile if isinstance(profile, str) else None)
    if profile is None and resolved.profile:
        profile = resolved.profile
    return resolved, profile


def load_tokenizer(source: str | os.PathLike, *, profile: str | None = None):
    """Load only the tokenizer, cleaned exactly as for a full load (for data-side tools)."""
    from transformers import AutoTokenizer

    resolved, _ = _resolve(source, profile)
    src, _ = _source_path(resolved.source)
    tokenizer = AutoTokenizer.from_pretrained(src)
    _disable_templates(tokenizer)
    return tokenizer


def load_base_model(
    source: str | os.PathLike,
    *,
    profile: str | ModelProfile | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    device: str | None = None,
    run_sentinels: bool = True,
    sentinel_max_new_tokens: int = 24,
    revision: str | None = None,
) -> LoadedModel:
    """Load a base model cleanly, run the guards, and return it with its provenance."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    resolved, profile = _resolve(source, profile)
    src, is_local = _source_path(resolved.source)
    if is_local:
        from cai_bootstrap.integrity import check_model_folder

        check_model_folder(src)  # a broken config or truncated weights, named before transformers reads them
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if quantization not in (None, "none", "nf4"):
        raise ValueError(f"quantization must be None or 'nf4', got {quantization!r}")
    if quantization == "nf4" and not str(device).startswith("cuda"):
        raise ValueError("4-bit nf4 quantization needs CUDA; use quantization=None on CPU")
    if dtype is None:
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)

    try:
        tokenizer = AutoTokenizer.from_pretrained(src, revision=revision)
    except OSError as e:
        if is_local:
            raise
        # A hub id with no network (or a wrong id): say so, not whatever the cache layer tripped over.
        raise ModelUnavailableError(f"{src}: the model hub could not provide this model ({_first_line(e)}); "
                                    "check the id and the network, or give a local model folder or a built-in name "
                                    "(gemma-3-270m, tiny-random)") from None
    chat_template = _disable_templates(tokenizer)  # its text names the markup to forbid (CG-03)
    config = AutoConfig.from_pretrained(src, revision=revision)
    is_test_model = is_local and (Path(src) / "cai_bootstrap_testmodel.json").exists()
    prof = (
        profile
        if isinstance(profile, ModelProfile)
        else get_profile(profile)
        if profile
        else detect_profile(
            getattr(config, "model_type", ""),
            is_test_model=is_test_model,
            tokenizer_bos=tokenizer.bos_token,
            tokenizer_eos=tokenizer.eos_token,
        )
    )
    bos_id, eos_id = _resolve_ids(tokenizer, prof)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    sentinel_texts = [s.prompt for s in SENTINELS]
    delta = delta_check(tokenizer, prof, bos_id, sentinel_texts)

    # safetensors only: pickle weights run code when loaded (integrity.check_model_folder says so first).
    load_kwargs: dict[str, Any] = {"dtype": torch_dtype, "revision": revision, "use_safetensors": True}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        load_kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(src, **load_kwargs)
    if quantization != "nf4":
        model.to(device)
    model.eval()
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id

    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        profile=prof,
        provenance={},
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        forbidden_ids=forbidden_token_ids(tokenizer, chat_template),
    )
    sources = forbidden_token_sources(tokenizer, chat_template)
    _install_forward_guard(lm)

    weights = weights_fingerprint(Path(src)) if is_local else {"mode": "revision", "revision": revision or getattr(config, "_commit_hash", None)}
    lm.provenance = {
        "loader": LOADER_NAME,
        "loader_version": loader_version(),
        "model_name": str(source),
        "model_source": resolved.to_dict(),
        "model_path": src,
        "is_local": is_local,
        "weights": weights,
        "dtype": dtype,
        "quantization": quantization or "none",
        "device": str(device),
        "profile": prof.to_dict(),
        "template_disabled": tokenizer.chat_template is None,
        "add_special_tokens": False,
        "bos_prepended": prof.needs_bos,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "n_forbidden_special_tokens": len(lm.forbidden_ids),
        "forbidden_tokens": {
            "n": len(lm.forbidden_ids),
            "template_seen": bool(_template_texts(chat_template)),
            "n_special": len(sources["special"]),
            "from_template": sorted(sources["template"].values()),
            "from_role_regex": sorted(sources["role_regex"].values()),
        },
        "delta_check": delta,
        # How generate() samples and stops, so a record says which code drew it (sampling.py, stopping.py).
        "generation": {"sampler": SAMPLER_NAME, "stop_strings": STOP_MATCHER_NAME,
                       "decode_backend": describe_decode_backend(DEFAULT_DECODE_BACKEND)},
        "sentinels": None,
    }
    if run_sentinels:
        lm.provenance["sentinels"] = run_sentinel_suite(lm, max_new_tokens=sentinel_max_new_tokens)
    else:
        lm.provenance["sentinels"] = {"skipped": True, "reason": "run_sentinels=False"}
    lm.provenance["load_seconds"] = round(time.time() - t0, 3)
    return lm


def run_sentinel_suite(lm: LoadedModel, *, max_new_tokens: int = 24) -> dict:
    """CG-05: raw-mode greedy sentinels; aborts on contamination or a broken load."""
    gens = lm.generate(
        [s.prompt for s in SENTINELS],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        batch_size=len(SENTINELS),
        progress=False,
    )
    summary = evaluate_sentinels({s.name: g.text for s, g in zip(SENTINELS, gens)}, lm.profile)
    summary["decoding"] = {"do_sample": False, "max_new_tokens": max_new_tokens}
    raise_on_failure(summary, quantization=lm.provenance.get("quantization"))
    return summary


def _load_raw_from_gguf(gguf_dir: str | os.PathLike, gguf_file: str):
    """Load a GGUF checkpoint (dequantized) for one-time conversion to a safetensors folder.

    Lives here because only the loader may call ``from_pretrained``; the caller converts
    and saves, and every real use then goes through ``load_base_model`` on the folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    return model, tokenizer
