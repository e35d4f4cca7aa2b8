"""How ``LoadedModel.generate`` runs the decoding loop: the KV cache and whether steps are compiled.

On a large GPU a small model's decoding is not bound by reading its weights. With
transformers' default dynamic KV cache, attention over a growing, left-padded cache
dominated (cProfile of Gemma-3-270m at batch 400: the attention call held the host for
6.6 of 11 s), and the rest is hundreds of small kernels launched from Python per step.
A static KV cache fixes the cache's shape, which changes the attention kernel and lets
transformers compile the decoding step and replay it as a CUDA graph. Which of these a
run uses changes speed and, for compiled steps, the last bits of the logits, so it is a
recorded setting (``generation.decode_backend`` in the load provenance), never an
automatic switch:

- ``eager``: a dynamic cache, never compiled (the reference);
- ``static``: a static cache sized to the call, never compiled. Attention runs over the
  padded cache length, so its sums round differently: greedy rows equalled ``eager``'s in
  every measurement (GPU bf16, CPU float32), sampled rows mostly (a draw can flip at a
  near-tie); the same call gives the same rows every time, which is what resuming needs;
- ``inductor`` (CUDA only, through the API): static cache, decoding steps compiled by
  inductor and replayed as CUDA graphs. Fused kernels round differently, so greedy rows
  differ from ``eager`` at near-ties, and two identical calls did not always give the
  same rows. Data generation needs rows that a resumed run reproduces, so its config
  offers ``eager`` and ``static`` only; ``inductor`` is for throughput measurements.

Measured figures: docs/ARCHITECTURE.md. Only decoding steps are compiled: ``generate``
runs the prefill, the one pass whose tokens come from outside the model, eagerly, so the
loader's forward guard still checks it (CG-03).
"""

from __future__ import annotations

from typing import Any

DECODE_BACKENDS = ("eager", "static", "inductor")
# What data generation may use: the backends whose rows a rerun reproduces.
GENERATION_DECODE_BACKENDS = ("eager", "static")
DEFAULT_DECODE_BACKEND = "eager"
COMPILED_BACKENDS = ("inductor",)
# The static cache is sized in steps of this many positions, so calls whose prompts differ
# by a few tokens share one cache shape (and one compiled graph).
CACHE_LENGTH_STEP = 64

_DESCRIPTIONS = {
    "eager": "eager: dynamic KV cache, no compilation",
    "static": "static KV cache, no compilation",
    "inductor": "static KV cache, decoding steps compiled by inductor (mode 'reduce-overhead')",
}


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
    """Keyword arguments for transformers' ``generate`` that select this backend.

    Every backend is explicit, so a model whose own generation config names another cache
    (or compiles by itself) still decodes as recorded.
    """
    if name == "eager":
        return {"cache_implementation": "dynamic", "disable_compile": True}
    kw: dict[str, Any] = {"cache_implementation": "static",
                          "max_cache_len": static_cache_length(longest_prompt, max_new_tokens)}
    if name == "static":
        # transformers compiles the decoding step by itself whenever the cache is static on a GPU.
        kw["disable_compile"] = True
    elif name == "inductor":
        from transformers import CompileConfig

        kw["compile_config"] = CompileConfig(backend="inductor", mode="reduce-overhead")
    else:
        raise DecodeBackendError(f"unknown decode backend {name!r}")
    return kw


def describe(name: str) -> str:
    """The provenance text of a backend (what a record says about how it was decoded)."""
    return _DESCRIPTIONS[name]
