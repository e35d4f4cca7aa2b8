"""Training labels, built and checked token by token (SFT-02, SFT-03).

A model trained on its prompts learns to write prompts; a model never shown an EOS never
learns to stop. Both mistakes are silent in the loss curve, so the labels are built here
from first principles rather than trusted to a library's masking, and every example (and
every batch the trainer draws) is re-checked against the rules below.

The boundary rule. The full text ``prompt + completion`` is tokenized once, through the
loader's encode path (``add_special_tokens=False``, BOS exactly as the model profile says),
because that is how the model sees it. BPE merges may cross the boundary: with the Qwen
tokenizer ``"Response:" + "\\nHello"`` tokenizes as ``Response``, ``:\\n``, ``Hello``, so no
token list of the prompt alone is a prefix of the full list. Character offsets decide:

- a token whose characters all lie in the prompt is a prompt token: label -100;
- every later token is a response token: its label is its id;
- a token that straddles the boundary (some prompt characters, at least one response
  character) counts as a response token. It cannot be split, and the model has to emit it
  to produce the response's first character; masking it would leave that character
  untrained. Such examples are counted (``boundary_merges``) so a format that merges
  across the boundary shows up in the training manifest.

The canonical completion is ``" " + response``; for Qwen- and Gemma-style tokenizers the
leading space starts a new pre-token, so in practice the boundary is clean.

Then exactly one EOS is appended, with a label, and no other EOS may occur.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

IGNORE_INDEX = -100


class MaskingError(ValueError):
    """An example or batch breaks the label rules; the message says which rule and where."""


class Encoder(Protocol):
    """What masking needs from a loaded model: the loader's ``LoadedModel`` satisfies it."""

    tokenizer: Any
    eos_token_id: int
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def check_ids(self, ids: Sequence[int], *, allow_trailing_eos: bool = False) -> None: ...


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    response_start: int  # index of the first labelled token
    boundary_merge: bool = False  # the first response token also holds prompt characters
    meta: dict = field(default_factory=dict, compare=False)


# -- pure rules over integers -------------------------------------------------------------------


def response_start(offsets: Sequence[Sequence[int]], prompt_chars: int) -> tuple[int, bool]:
    """Index of the first token holding a response character, and whether it straddles the boundary.

    ``offsets`` are (start, end) character spans aligned with the token ids; zero-width
    spans (an explicit BOS) hold no characters and are never the boundary.
    """
    for i, (start, end) in enumerate(offsets):
        if end > start and end > prompt_chars:
            return i, start < prompt_chars
    raise MaskingError(f"no token holds a character at or after position {prompt_chars}: the completion is empty")


def build_labels(ids: Sequence[int], start: int, eos_id: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for tokens ``ids`` (no EOS yet) whose response begins at ``start``."""
    if not 0 < start <= len(ids):
        raise MaskingError(f"response start {start} outside 1..{len(ids)}: the prompt must keep at least one token")
    if eos_id in ids:
        raise MaskingError(f"EOS id {eos_id} already occurs at position {list(ids).index(eos_id)}; it is appended exactly once")
    input_ids = [int(t) for t in ids] + [int(eos_id)]
    labels = [IGNORE_INDEX] * start + [int(t) for t in ids[start:]] + [int(eos_id)]
    return input_ids, labels


def mask_from_offsets(
    ids: Sequence[int], offsets: Sequence[Sequence[int]], prompt_chars: int, eos_id: int
) -> TrainingExample:
    """The whole rule on plain integers: boundary from offsets, labels, one trailing EOS."""
    if len(ids) != len(offsets):
        raise MaskingError(f"{len(ids)} token ids but {len(offsets)} offsets")
    start, straddles = response_start(offsets, prompt_chars)
    input_ids, labels = build_labels(ids, start, eos_id)
    ex = TrainingExample(input_ids, labels, [1] * len(input_ids), start, straddles)
    verify_example(ex, eos_id)
    return ex


def verify_example(ex: TrainingExample, eos_id: int) -> None:
    """Every invariant of a training example, checked independently of how it was built."""
    n = len(ex.input_ids)
    if not (len(ex.labels) == len(ex.attention_mask) == n):
        raise MaskingError(f"length mismatch: input_ids {n}, labels {len(ex.labels)}, attention_mask {len(ex.attention_mask)}")
    s = ex.response_start
    if not 0 < s < n:
        raise MaskingError(f"response start {s} leaves no prompt or no response in {n} tokens")
    bad = [i for i in range(s) if ex.labels[i] != IGNORE_INDEX]
    if bad:
        raise MaskingError(f"prompt positions {bad[:10]} carry labels; every prompt token must be {IGNORE_INDEX}")
    bad = [i for i in range(s, n) if ex.labels[i] != ex.input_ids[i]]
    if bad:
        raise MaskingError(f"response positions {bad[:10]} are not trained on their own token")
    if ex.input_ids[-1] != eos_id or ex.labels[-1] != eos_id:
        raise MaskingError(f"the sequence must end with EOS {eos_id} as a label, ends with {ex.input_ids[-1]}/{ex.labels[-1]}")
    if ex.input_ids.count(eos_id) != 1:
        raise MaskingError(f"EOS {eos_id} occurs {ex.input_ids.count(eos_id)} times; exactly one, at the end")
    if n - s < 2:
        raise MaskingError("the response has no token besides EOS")
    if any(m != 1 for m in ex.attention_mask):
        raise MaskingError("an unpadded example must attend to every token")


def verify_collated(batch: Mapping[str, Any], examples: Mapping[tuple, TrainingExample], pad_id: int) -> int:
    """A collated batch holds verified examples only: same tokens, same labels, padding unlabelled.

    Checks the labels the model actually trains on, after the trainer's collator, so a
    library change in padding or label handling cannot slip past the example checks.
    Rows are matched to their example by content (``examples`` maps token tuples to
    examples), since the sampler shuffles. Returns the number of rows checked.
    """
    input_ids = [list(map(int, r)) for r in _rows(batch["input_ids"])]
    labels = [list(map(int, r)) for r in _rows(batch["labels"])]
    if "attention_mask" not in batch:
        raise MaskingError("the collated batch has no attention_mask; padding cannot be told from tokens")
    mask = [list(map(int, r)) for r in _rows(batch["attention_mask"])]
    for r in range(len(input_ids)):
        n = sum(mask[r])
        if mask[r] != [1] * n + [0] * (len(mask[r]) - n):
            raise MaskingError(f"batch row {r}: attention mask is not a right-padded block of ones")
        ex = examples.get(tuple(input_ids[r][:n]))
        if ex is None:
            raise MaskingError(f"batch row {r}: its tokens match no verified example")
        if labels[r][:n] != ex.labels:
            diff = [i for i in range(n) if labels[r][i] != ex.labels[i]][:10]
            raise MaskingError(f"batch row {r}: labels differ from the verified example at positions {diff}")
        if any(t != IGNORE_INDEX for t in labels[r][n:]):
            raise MaskingError(f"batch row {r}: padding positions carry labels")
        if any(t != pad_id for t in input_ids[r][n:]):
            raise MaskingError(f"batch row {r}: padding is not the pad id {pad_id}")
    return len(input_ids)


def _rows(t: Any) -> list:
    return t.tolist() if hasattr(t, "tolist") else list(t)


# -- with a real tokenizer ------------------------------------------------------------------------


def completion_text(response: str) -> str:
    """The completion the model learns after ``Response:``: one space, then the response."""
    if not isinstance(response, str) or not response.strip():
        raise MaskingError("response must be a non-empty string")
    return " " + response.strip()


def encode_example(lm: Encoder, prompt: str, completion: str) -> TrainingExample:
    """Tokenize ``prompt + completion`` once, through the loader's encode path, and label it.

    Offsets come from the fast tokenizer on the same text; the ids must equal the encode
    path's ids exactly (after its BOS, if any), or the offsets would describe other tokens.
    """
    if not prompt or not completion:
        raise MaskingError("prompt and completion must both be non-empty")
    text = prompt + completion
    ids = lm.encode(text)  # BOS per profile, add_special_tokens=False, special-token check (CG-02/03)
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise MaskingError("the tokenizer gives no character offsets; training needs a fast (Rust) tokenizer")
    raw = list(enc["input_ids"])
    n_prefix = len(ids) - len(raw)
    if n_prefix not in (0, 1) or ids[n_prefix:] != raw or (n_prefix == 1 and ids[0] != lm.bos_token_id):
        raise MaskingError("offset tokenization differs from the loader's encode path; refusing to guess the boundary")
    offsets = [(0, 0)] * n_prefix + [tuple(o) for o in enc["offset_mapping"]]
    ex = mask_from_offsets(ids, offsets, len(prompt), lm.eos_token_id)
    # Offsets are the tokenizer's claim; the tokens themselves must agree. Tokenizers that trim
    # whitespace from offsets would otherwise hide a merged ':\n' inside the masked prompt.
    masked = lm.tokenizer.decode(ids[n_prefix : ex.response_start], clean_up_tokenization_spaces=False)
    if not prompt.startswith(masked) or (masked != prompt and not ex.boundary_merge):
        raise MaskingError(
            f"the masked tokens decode to {masked[-40:]!r}, which is not the prompt {prompt[-40:]!r}: "
            "this tokenizer's character offsets cannot be trusted for the boundary"
        )
    lm.check_ids(ex.input_ids, allow_trailing_eos=True)
    return ex


def encode_record(lm: Encoder, record: Mapping[str, Any]) -> TrainingExample:
    """A dataset record (PV-01) as a training example: the canonical prompt, then ``" " + response``."""
    from cai_bootstrap.prompts import render_response_prompt

    prompt = render_response_prompt(record["instruction"])
    return encode_example(lm, prompt, completion_text(record["response"]))


@dataclass
class EncodedDataset:
    examples: list[TrainingExample]
    dropped: dict[str, list[int]]  # reason -> record indices
    boundary_merges: int
    n_tokens: int
    n_label_tokens: int

    def summary(self) -> dict:
        return {
            "examples": len(self.examples),
            "dropped": {k: len(v) for k, v in sorted(self.dropped.items())},
            "dropped_indices": {k: v[:50] for k, v in sorted(self.dropped.items())},
            "boundary_merges": self.boundary_merges,
            "tokens": self.n_tokens,
            "label_tokens": self.n_label_tokens,
        }


def encode_records(lm: Encoder, records: Sequence[Mapping[str, Any]], max_length: int) -> EncodedDataset:
    """Encode every record; an example longer than ``max_length`` is dropped, never truncated.

    Truncation would cut off the EOS (SFT-03) and teach the model that answers end
    mid-sentence; dropping is counted under a stable reason and recorded.
    """
    from cai_bootstrap.loader import ContaminationError

    examples: list[TrainingExample] = []
    dropped: dict[str, list[int]] = {}
    merges = tokens = label_tokens = 0
    for i, rec in enumerate(records):
        try:
            ex = encode_record(lm, rec)
        except (MaskingError, ContaminationError) as e:
            raise type(e)(f"record {i + 1} ({str(rec.get('instruction', ''))[:60]!r}): {e}") from e
        if len(ex.input_ids) > max_length:
            dropped.setdefault("too_long", []).append(i)
            continue
        examples.append(ex)
        merges += ex.boundary_merge
        tokens += len(ex.input_ids)
        label_tokens += len(ex.input_ids) - ex.response_start
    if not examples:
        raise MaskingError(f"no example fits max_length {max_length}; raise max_length or check the data")
    return EncodedDataset(examples, dropped, merges, tokens, label_tokens)
