"""How ``LoadedModel.generate`` runs the decoding loop: the KV cache and whether steps are compiled.

A 270M model's decoding step on a large GPU reads its weights in well under a
millisecond, yet eager transformers spends tens of milliseconds per step launching
several hundred small kernels from Python (RMSNorm alone is seven ops per call, four
calls per layer). The remedy is the one transformers builds in: a static KV cache,
whose fixed shapes let ``generate`` compile the decoding step and replay it as a CUDA
graph. Which of these a run uses changes speed and, through kernel choice, the last
bits of the logits, so greedy rows may differ from eager decoding at near-ties; the
backend is therefore a recorded setting (``generation.decode_backend`` in the load
provenance), never an automatic switch.

- ``eager``: transformers' default dynamic cache, no compilation (the reference);
- ``static``: a static cache, no compilation (shows what the cache alone changes);
- ``inductor``: static cache, the step compiled by inductor (fused kernels) and replayed
  as a CUDA graph (``mode="reduce-overhead"``, transformers' default compile config).

Measured on an H200 (Gemma-3-270m, bf16, 400 greedy prompts, 96 new tokens; docs/ARCHITECTURE.md):
the static cache alone decodes every row exactly as eager does and at batch 400 is 3.2x
faster than eager at that batch; inductor is 3.7x faster again, but 111 of 400 greedy rows
then differ from eager decoding at some token. torch's ``cudagraphs`` backend (graphs of the
unfused kernels, which would keep eager numerics) failed on the smaller last batch of a call
(a size mismatch inside the replayed graph), so it is not offered.

Only the decoding steps are compiled: ``generate`` runs the prefill, the one pass
whose tokens come from outside the model, eagerly, so the loader's forward guard still
checks it (CG-03).
"""

from __future__ import annotations

from typing import Any

DECODE_BACKENDS = ("eager", "static", "inductor")
DEFAULT_DECODE_BACKEND = "eager"
COMPILED_BACKENDS = ("inductor",)
# The static cache is sized in steps of this many positions, so calls whose prompts differ
# by a few tokens share one cache shape (and one compiled graph).
CACHE_LENGTH_STEP = 64


class DecodeBackendError(ValueError):
    """A decode backend that cannot run as asked; the message says what to use instead."""


def check_backend(name: str, device: str) -> str:
    """The backend name, checked against what the device can do."""
    if name not in DECODE_BACKENDS:
        raise DecodeBackendError(f"decode_backend must be one of {', '.join(DECODE_BACKENDS)}; got {name!r}")
    if name in COMPILED_BACKENDS and not str(device).startswith("cuda"):
        raise DecodeBackendError(
            f"decode_backend {name!r} replays CUDA graphs and needs a CUDA device (this model is on {device}); "
            "use 'eager' or 'static' here")
    return name


def static_cache_length(longest_prompt: int, max_new_tokens: int, step: int = CACHE_LENGTH_STEP) -> int:
    """Positions the static cache holds: prompt plus new tokens, rounded up to a multiple of ``step``."""
    if longest_prompt < 1 or max_new_tokens < 1:
        raise ValueError("a static cache needs at least one prompt token and one new token")
    need = longest_prompt + max_new_tokens
    return -(-need // step) * step


def generate_kwargs(name: str, *, longest_prompt: int, max_new_tokens: int) -> dict[str, Any]:
    """Keyword arguments for transformers' ``generate`` that select this backend."""
    if name == "eager":
        return {}
    kw: dict[str, Any] = {"cache_implementation": "static",
                          "max_cache_len": static_cache_length(longest_prompt, max_new_tokens)}
    if name == "static":
        # transformers compiles the decoding step by itself whenever the cache is static on a GPU.
        kw["disable_compile"] = True
        return kw
    from transformers import CompileConfig

    if name == "inductor":
        kw["compile_config"] = CompileConfig(backend="inductor", mode="reduce-overhead")
    else:
        raise DecodeBackendError(f"unknown decode backend {name!r}")
    return kw


def describe(name: str) -> str:
    """The provenance text of a backend (what a record says about how it was decoded)."""
    return {
        "eager": "eager: dynamic KV cache, no compilation",
        "static": "static KV cache, no compilation",
        "inductor": "static KV cache, decoding steps compiled by inductor (mode 'reduce-overhead')",
    }[name]
