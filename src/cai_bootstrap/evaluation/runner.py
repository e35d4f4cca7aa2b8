"""Generate and verify: each model answers every item, one model resident at a time.

Pairing (EV-02) comes from rendering every item once per mode with the same builder
for every model; determinism (EV-03) from greedy decoding with a fixed batch layout;
memory safety (EV-07) from loading each model through a factory only when its turn
comes and releasing it before the next one loads. Loading several models at once is
how the first evaluation of this method ran out of memory.

The base model also answers in the PR-07 demonstration frame (``incontext``, EV-08):
what it already does with a few answered examples is the bar a trained model should
clear from the zero-shot frame. That arm's generation stops at the frame's stop strings,
as data generation's does.

Responses are recorded raw. Cutting a response at a new prompt is a rule of the
verifiers (``verifiers.answer_segment``), applied in the open and recorded per item as
``continued``, never a silent edit of the text.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cai_bootstrap.evaluation.verifiers import has_new_prompt, verify
from cai_bootstrap.io_utils import sha256_file
from cai_bootstrap.prompts import build_demonstration_prompt, demonstration_stop_strings, render_response_prompt

FRAMED = "framed"
RAW = "raw"
INCONTEXT = "incontext"
PROMPT_MODES = (FRAMED, RAW, INCONTEXT)
BASE = "base"
SFT = "sft"
# EV-03: long enough for the eval set's answers; the report flags truncation above 5%.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8


def build_prompt(instruction: str, mode: str, *, item_id: str | None = None, seed: int = 0) -> str:
    """``framed``: the canonical response frame (PR-01); ``raw``: the instruction text alone;
    ``incontext``: the PR-07 demonstration frame, its demonstrations drawn from (seed, item id).

    Raw mode is what the contamination sentinels use; the gap check (GT-03) needs both,
    because the frame alone can unlock a skill the base model already has.
    """
    if mode == FRAMED:
        return render_response_prompt(instruction)
    if mode == RAW:
        return instruction
    if mode == INCONTEXT:
        if item_id is None:
            raise ValueError("the incontext prompt mode draws demonstrations per item: pass item_id")
        return build_demonstration_prompt(instruction, seed=seed, item_id=item_id).text
    raise ValueError(f"unknown prompt mode {mode!r}; known: {', '.join(PROMPT_MODES)}")


# No tokenizer makes tokens longer than this many characters on average, so a prompt longer
# than context * this is over the limit without tokenizing it (a 10 MB item is not encoded).
MAX_CHARS_PER_TOKEN = 64


def prompt_length_problems(items: Sequence[dict], modes: Sequence[str], *, count_tokens: Callable[[str], int],
                           context_tokens: int, max_new_tokens: int, seed: int = 0) -> list[str]:
    """Items whose prompt plus ``max_new_tokens`` would not fit the model's context, each named.

    An oversized item must stop the run before any model loads: padded into a batch it
    asks for attention over millions of positions (terabytes) instead of failing clearly.
    """
    room = context_tokens - max_new_tokens
    problems = []
    for it in items:
        for mode in modes:
            prompt = build_prompt(it["instruction"], mode, item_id=it.get("id"), seed=seed)
            n = len(prompt) // MAX_CHARS_PER_TOKEN if len(prompt) > room * MAX_CHARS_PER_TOKEN else count_tokens(prompt)
            if n > room:
                shown = f"at least {n}" if len(prompt) > room * MAX_CHARS_PER_TOKEN else str(n)
                problems.append(f"item {it.get('id')!r} ({mode}): {shown} prompt tokens, over the {room} the model's "
                                f"context of {context_tokens} leaves after --max-new-tokens {max_new_tokens}")
                break
    return problems


@dataclass(frozen=True)
class EvalDecoding:
    """Greedy decoding for evaluation (EV-03); ``temperature`` is recorded as 0 and never passed."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    do_sample: bool = False
    temperature: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.do_sample is not False or self.temperature != 0.0:
            raise ValueError("evaluation decoding is greedy: do_sample must be False and temperature 0")
        if self.repetition_penalty != 1.0:
            raise ValueError("evaluation decoding uses repetition_penalty 1.0 (plain greedy)")

    def generate_kwargs(self) -> dict:
        return dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def as_provenance(self) -> dict:
        return asdict(self)


def check_special_ids(lm: Any) -> None:
    """Batched greedy decoding needs a pad id and must be able to stop on EOS."""
    if getattr(lm, "eos_token_id", None) is None or getattr(lm, "pad_token_id", None) is None:
        raise ValueError("the model has no eos/pad token id; evaluation needs both (pad for batching, eos to stop)")


def run_items(lm: Any, items: Sequence[dict], *, model_label: str, mode: str, decoding: EvalDecoding,
              progress: bool | None = None) -> list[dict]:
    """Answer and verify every item with one loaded model in one prompt mode."""
    check_special_ids(lm)
    prompts = [build_prompt(it["instruction"], mode, item_id=it["id"], seed=decoding.seed) for it in items]
    stops = {"stop_strings": demonstration_stop_strings()} if mode == INCONTEXT else {}
    gens = lm.generate(prompts, progress=progress, **decoding.generate_kwargs(), **stops)
    if len(gens) != len(items):
        raise RuntimeError(f"{model_label}/{mode}: {len(gens)} generations for {len(items)} prompts")
    records = []
    for it, prompt, g in zip(items, prompts, gens):
        result = verify(g.text, it["verifier"], instruction=it["instruction"], hit_limit=bool(g.hit_limit))
        records.append({
            "model": model_label,
            "mode": mode,
            "id": it["id"],
            "type": it["type"],
            "category": it["category"],
            "instruction": it["instruction"],
            "prompt": prompt,
            "response": g.text,
            "success": result.passed,
            "reason": result.reason,
            "detail": result.detail,
            "verifier": it["verifier"]["name"],
            "tokens_generated": int(g.n_tokens),
            "hit_limit": bool(g.hit_limit),
            "stopped_on_eos": bool(g.stopped_on_eos),
            "continued": has_new_prompt(g.text),
        })
    return records


def free_model(lm: Any) -> None:
    """Release weights and cached GPU memory now, not whenever the collector gets to it."""
    lm.release()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


ModelFactory = Callable[[], Any]


@dataclass
class EvalRun:
    records: list[dict]
    models: dict[str, dict]  # label -> provenance of the loaded model
    modes: list[str]
    decoding: EvalDecoding
    timings: dict[str, float] = field(default_factory=dict)
    model_modes: dict[str, list[str]] = field(default_factory=dict)  # label -> its modes; empty: all take ``modes``

    def modes_of(self, model_label: str) -> list[str]:
        return list(self.model_modes.get(model_label, self.modes))

    def outcomes(self, model_label: str, mode: str) -> list[dict]:
        return [r for r in self.records if r["model"] == model_label and r["mode"] == mode]


def evaluate_models(
    items: Sequence[dict],
    models: Sequence[tuple[str, ModelFactory]],
    *,
    modes: Sequence[str] = (FRAMED,),
    extra_modes: Mapping[str, Sequence[str]] | None = None,
    decoding: EvalDecoding | None = None,
    progress: bool | None = None,
) -> EvalRun:
    """Evaluate each model in turn: load, answer every item in every mode, release.

    ``extra_modes`` adds modes for one model (the base model's in-context arm, EV-08); they
    run while that model is loaded, so it is never loaded twice.
    """
    decoding = decoding or EvalDecoding()
    extra_modes = {k: list(v) for k, v in (extra_modes or {}).items()}
    unknown = [m for m in [*modes, *(m for v in extra_modes.values() for m in v)] if m not in PROMPT_MODES]
    if not modes or unknown:
        raise ValueError(f"modes must be a non-empty subset of {list(PROMPT_MODES)}, got {list(modes)} and {extra_modes}")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}")
    stray = sorted(set(extra_modes) - set(labels))
    if stray:
        raise ValueError(f"extra_modes name models that are not evaluated: {stray}")
    model_modes = {label: list(modes) + [m for m in extra_modes.get(label, []) if m not in modes] for label in labels}
    all_modes = list(dict.fromkeys(m for label in labels for m in model_modes[label]))
    records: list[dict] = []
    provenance: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for label, factory in models:
        t0 = time.time()
        lm = factory()
        try:
            provenance[label] = dict(getattr(lm, "provenance", {}) or {})
            for mode in model_modes[label]:
                records += run_items(lm, items, model_label=label, mode=mode, decoding=decoding, progress=progress)
        finally:
            free_model(lm)
            del lm
        timings[label] = round(time.time() - t0, 3)
    return EvalRun(records=records, models=provenance, modes=all_modes, decoding=decoding, timings=timings,
                   model_modes=model_modes)


# --------------------------------------------------------------------------------------
# The trained model: base weights through the clean loader, plus a PEFT adapter
# --------------------------------------------------------------------------------------


def adapter_fingerprint(adapter_path: str | Path) -> dict:
    folder = Path(adapter_path)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return {"path": str(folder), "files": {p.name: sha256_file(p) for p in files}}


def check_adapter_dir(adapter_path: str | Path) -> Path:
    folder = Path(adapter_path)
    if folder.exists() and not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file, not an adapter folder; pass the adapter/ folder a training run wrote")
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    if not (folder / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder} has no adapter_config.json; pass the folder a PEFT adapter was saved to")
    return folder


def load_trained_model(base_source: str | Path, adapter_path: str | Path, **load_kwargs: Any) -> Any:
    """Base model and tokenizer from the clean loader, with the adapter applied on top.

    Only the adapter is loaded here; the base model and tokenizer still come from
    ``load_base_model``, so the template and token guards hold for the trained model too.
    """
    from peft import PeftModel

    from cai_bootstrap.loader import load_base_model

    folder = check_adapter_dir(adapter_path)
    lm = load_base_model(base_source, **load_kwargs)
    try:
        lm.model = PeftModel.from_pretrained(lm.model, str(folder))
    except BaseException:
        free_model(lm)  # an adapter that does not fit must not leave the base weights resident
        raise
    lm.model.eval()
    lm.provenance["adapter"] = adapter_fingerprint(folder)
    return lm
