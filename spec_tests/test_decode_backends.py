"""Decode backends (decode_backends.py): the static cache decodes as eager does, the guard still
checks every prefill, the choice is recorded, and a backend a device cannot run fails before loading."""

from __future__ import annotations

import pytest
import torch

from cai_bootstrap import decode_backends as DB
from cai_bootstrap.loader import ContaminationError

IM_START = 151644  # <|im_start|> of the tiny model's Qwen tokenizer
PROMPTS = ["a b c d e f g", "hi", "one two three\n\nfour", "x y"]


@pytest.fixture
def backend(tiny_lm):
    """Leave the shared model as eager whatever a test sets."""
    yield tiny_lm
    tiny_lm.use_decode_backend(DB.DEFAULT_DECODE_BACKEND)


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("sampling", [
    dict(do_sample=False),
    dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=5),
    dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, seed=2),  # transformers' own sampling path
])
def test_static_cache_decodes_as_eager_on_the_tiny_model(backend, batch_size, sampling):
    """A regression check of the cache, padding and stop plumbing: on this float32 model the rows are
    equal; on a real model sampled rows may differ at near-ties (docs/ARCHITECTURE.md)."""
    kw = dict(max_new_tokens=12, batch_size=batch_size, stop_strings=("\n\n",), **sampling)
    eager = backend.use_decode_backend("eager").generate(PROMPTS, **kw)
    static = backend.use_decode_backend("static").generate(PROMPTS, **kw)
    assert [g.token_ids for g in backend.generate(PROMPTS, **kw)] == [g.token_ids for g in static]  # repeatable
    assert [g.token_ids for g in static] == [g.token_ids for g in eager]
    assert [(g.hit_limit, g.stopped_on_eos) for g in static] == [(g.hit_limit, g.stopped_on_eos) for g in eager]


@pytest.mark.spec("CG-03")
def test_static_cache_prefill_is_checked_with_its_padding_excluded(backend):
    """transformers hands a static-cache forward a prepared mask; padding is still known, tokens still checked."""
    backend.use_decode_backend("static")
    # Rows of different lengths: the short one is left-padded with the pad token, itself a special token.
    assert backend.pad_token_id in backend.forbidden_ids
    gens = backend.generate(["a b c d e f g h", "hi"], max_new_tokens=4, do_sample=False, batch_size=2)
    assert len(gens) == 2
    ids = torch.tensor([[16664, 20, 25], [16664, IM_START, 25]])  # past encode(): only the forward guard sees it
    mask = torch.ones_like(ids)
    with pytest.raises(ContaminationError, match="im_start"):
        backend.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                               cache_implementation="static", disable_compile=True)


@pytest.mark.spec("CG-03")
def test_the_guard_checks_a_padded_static_cache_prefill_against_its_own_padding(backend, monkeypatch):
    """A forbidden token past the padding of a static-cache batch is caught by the forward guard itself."""
    backend.use_decode_backend("static")
    clean = backend.encode_many(["a b c d e f g h", "hi there"])
    smuggled = [clean[0], clean[1][:-1] + [IM_START]]  # as if an encode path had missed it
    monkeypatch.setattr(backend, "encode_many", lambda texts: [list(r) for r in smuggled])
    with pytest.raises(ContaminationError, match="im_start"):
        backend.generate(["x", "y"], max_new_tokens=2, do_sample=False, batch_size=2)
    assert getattr(backend._prefill, "mask", None) is None  # nothing left for the next call


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize("ids", [[[16664, IM_START, 25]], [[IM_START]]], ids=["three-tokens", "one-token"])
def test_a_compiled_pass_without_a_cache_is_still_checked(tiny_lm, ids):
    """Compiling the model does not compile the guard away, for a one-token pass either."""
    compiled = torch.compile(tiny_lm.model, backend="eager")
    bad = torch.tensor(ids)
    with pytest.raises(ContaminationError, match="im_start"):
        compiled(input_ids=bad, attention_mask=torch.ones_like(bad))


@pytest.mark.spec("CG-03")
def test_a_compiled_prefill_is_still_checked(tiny_lm):
    """Compiling the model does not compile the guard away: a several-token pass is checked eagerly."""
    compiled = torch.compile(tiny_lm.model, backend="eager")
    bad = torch.tensor([[16664, IM_START, 25]])
    with pytest.raises(ContaminationError, match="position 1"):
        compiled(input_ids=bad, attention_mask=torch.ones_like(bad))
    clean = torch.tensor([[16664, 20, 25]])
    compiled(input_ids=clean, attention_mask=torch.ones_like(clean))


@pytest.mark.spec("CG-06")
def test_the_backend_is_recorded_in_the_load_provenance(backend):
    assert backend.provenance["generation"]["decode_backend"] == DB.describe("eager")
    backend.use_decode_backend("static")
    assert backend.provenance["generation"]["decode_backend"] == DB.describe("static")
    assert backend.decode_backend == "static"


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("name, device, error", [
    ("eager", "cpu", None), ("static", "cpu", None), ("inductor", "cuda:0", None), ("inductor", "cuda", None),
    ("inductor", "cpu", "needs a CUDA device"), ("inductor", "mps", "needs a CUDA device"),
    ("fast", "cuda", "must be one of"),
    ("cudagraphs", "cuda", "must be one of"),  # measured failing on a call's smaller last batch
])
def test_backend_checks(name, device, error):
    if error is None:
        assert DB.check_backend(name, device) == name
    else:
        with pytest.raises(DB.DecodeBackendError, match=error):
            DB.check_backend(name, device)


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("prompt, new, length", [(1, 1, 64), (100, 96, 256), (160, 96, 256), (161, 96, 320)])
def test_static_cache_length_is_rounded_up_so_similar_calls_share_a_shape(prompt, new, length):
    assert DB.static_cache_length(prompt, new) == length
    assert DB.static_cache_length(prompt, new) >= prompt + new


@pytest.mark.spec("PR-02")
def test_generate_kwargs_per_backend():
    # Explicit even for eager: a model's own generation config cannot switch the cache or compile silently.
    assert DB.generate_kwargs("eager", longest_prompt=10, max_new_tokens=5) == {
        "cache_implementation": "dynamic", "disable_compile": True}
    static = DB.generate_kwargs("static", longest_prompt=10, max_new_tokens=5)
    assert static == {"cache_implementation": "static", "max_cache_len": 64, "disable_compile": True}
    fused = DB.generate_kwargs("inductor", longest_prompt=10, max_new_tokens=5)
    assert (fused["compile_config"].backend, fused["compile_config"].mode) == ("inductor", "reduce-overhead")
    assert "disable_compile" not in fused and fused["max_cache_len"] == 64


@pytest.mark.spec("OPS-01", "PR-02")
def test_data_generation_offers_only_backends_whose_rows_a_rerun_reproduces():
    from cai_bootstrap.datagen.config import ConfigError, load_config

    assert set(DB.GENERATION_DECODE_BACKENDS) == {"eager", "static"}
    assert load_config(None, device="cpu", decode_backend="static").decode_backend == "static"
    for name in ("inductor", "turbo"):  # compiled steps changed rows between two identical calls on a GPU
        with pytest.raises(ConfigError, match="decode_backend"):
            load_config(None, device="cuda", decode_backend=name)


@pytest.mark.spec("OPS-01")
def test_generate_command_line_sets_the_backend():
    import argparse

    from cai_bootstrap.commands import generate_cmds

    ap = argparse.ArgumentParser()
    generate_cmds.register(ap.add_subparsers())
    args = ap.parse_args(["generate", "--device", "cpu", "--decode-backend", "static"])
    assert generate_cmds.config_from_args(args).decode_backend == "static"
