"""Per-family facts the clean loader needs: BOS policy, EOS token, sentinel expectations.

The Gemma base model produces garbage without a leading BOS, while Qwen base models
have no BOS at all; a single global rule would break one of them silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# What a failed completion sentinel means for a profile.
REQUIRED = "required"  # abort: the load is broken (e.g. missing BOS)
WARN = "warn"  # record a warning: unknown family, no calibrated expectation
EXEMPT = "exempt"  # random weights cannot complete text; recorded as exempt


@dataclass(frozen=True)
class ModelProfile:
    name: str
    needs_bos: bool
    bos_token: str | None
    eos_token: str
    completion_sentinel: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, ModelProfile] = {
    "qwen": ModelProfile("qwen", False, None, "<|endoftext|>", REQUIRED, "Qwen base models: no BOS; EOS <|endoftext|>"),
    "gemma": ModelProfile("gemma", True, "<bos>", "<eos>", REQUIRED, "Gemma base models need exactly one leading <bos>"),
    "llama": ModelProfile("llama", True, "<|begin_of_text|>", "<|end_of_text|>", REQUIRED, "Llama 3 base models"),
    "tiny-random": ModelProfile(
        "tiny-random",
        False,
        None,
        "<|endoftext|>",
        EXEMPT,
        "random-weight test model: exempt from the completion sentinel (cannot complete text)",
    ),
}

# config.model_type prefixes -> profile
_MODEL_TYPE_PROFILES = (("gemma", "gemma"), ("qwen", "qwen"), ("llama", "llama"))


def known_profiles() -> list[str]:
    return sorted(PROFILES) + ["generic"]


def get_profile(name: str) -> ModelProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown model profile {name!r}; known: {', '.join(known_profiles())}")
    return PROFILES[name]


def detect_profile(model_type: str, *, is_test_model: bool, tokenizer_bos: str | None, tokenizer_eos: str | None) -> ModelProfile:
    """Pick a profile from the model type; unknown families get a conservative generic one."""
    if is_test_model:
        return PROFILES["tiny-random"]
    mt = (model_type or "").lower()
    for prefix, name in _MODEL_TYPE_PROFILES:
        if mt.startswith(prefix):
            return PROFILES[name]
    return ModelProfile(
        "generic",
        needs_bos=tokenizer_bos is not None,
        bos_token=tokenizer_bos,
        eos_token=tokenizer_eos or "",
        completion_sentinel=WARN,
        note=f"no calibrated profile for model_type {model_type!r}: BOS used iff the tokenizer defines one",
    )
