"""Model sources: every spec kind resolves, conversions happen once and never half, errors say how to fix.

The real Gemma packages are not needed here: GGUF conversion and package assembly are
replaced by fakes. The one real conversion test is slow and opt-in (CAI_RUN_SLOW=1).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from cai_bootstrap import model_sources as ms


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(ms.CACHE_ENV, str(root))
    return root


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace GGUF dequantization with a fake that writes a minimal HF folder and counts calls."""
    calls: list[Path] = []

    def convert(gguf_path, out_dir):
        calls.append(Path(gguf_path))
        out = Path(out_dir)
        (out / "config.json").write_text(json.dumps({"model_type": "fake"}))
        (out / "model.safetensors").write_bytes(Path(gguf_path).read_bytes())
        return {"model_type": "fake"}

    monkeypatch.setattr(ms, "convert_gguf_to_folder", convert)
    monkeypatch.setattr(ms, "_require_gguf_reader", lambda: None)
    return calls


def _hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


# -- resolution of each kind --------------------------------------------------------------------


@pytest.mark.spec("OPS-02")
def test_local_folder_is_used_as_is(tmp_path, cache):
    folder = _hf_folder(tmp_path / "my-model")
    r = ms.resolve_model(str(folder))
    assert (r.kind, r.source, r.profile) == ("folder", str(folder.resolve()), None)
    assert ms.resolve_model(folder, profile="qwen").profile == "qwen"
    assert not cache.exists(), "a plain folder needs no cache"


@pytest.mark.spec("OPS-02")
@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-32B", "google/gemma-3-270m", "org/name.v1_x-y"])
def test_hub_id_passes_through_unchanged(hub_id, cache):
    r = ms.resolve_model(hub_id)
    assert (r.kind, r.source, r.spec) == ("hub", hub_id, hub_id)
    assert not cache.exists(), "no download or cache use for hub ids"


@pytest.mark.spec("OPS-02")
def test_gguf_file_is_converted_once(tmp_path, cache, fake_convert):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake weights")
    r1 = ms.resolve_model(str(gguf), profile="llama")
    r2 = ms.resolve_model(str(gguf))
    assert len(fake_convert) == 1, "the second resolve must reuse the converted folder"
    assert r1.kind == "gguf" and r1.profile == "llama" and r1.source == r2.source
    out = Path(r1.source)
    assert out.parent == cache / "converted" and (out / "config.json").is_file()
    assert r1.source_sha256 == hashlib.sha256(b"GGUF fake weights").hexdigest()
    assert ms.read_marker(out)["source_sha256"] == r1.source_sha256
    # A changed file is a different source and gets its own conversion.
    time.sleep(0.01)
    gguf.write_bytes(b"GGUF other weights!")
    r3 = ms.resolve_model(str(gguf))
    assert len(fake_convert) == 2 and r3.source != r1.source


@pytest.mark.spec("OPS-02")
def test_folder_holding_only_a_gguf_resolves_to_it(tmp_path, cache, fake_convert):
    d = tmp_path / "dl"
    d.mkdir()
    (d / "x.gguf").write_bytes(b"weights")
    assert ms.resolve_model(str(d)).kind == "gguf"


@pytest.mark.spec("OPS-02")
def test_tiny_random_is_built_once_with_its_profile(cache, monkeypatch):
    from cai_bootstrap import testmodel

    built: list[Path] = []

    def fake_build(out_dir, seed=0):
        built.append(Path(out_dir))
        _hf_folder(Path(out_dir))
        (Path(out_dir) / testmodel.MARKER_FILE).write_text(json.dumps({"seed": seed}))
        return Path(out_dir)

    monkeypatch.setattr(testmodel, "build_tiny_model", fake_build)
    r = ms.resolve_model("tiny-random")
    ms.resolve_model("tiny-random")
    assert len(built) == 1
    assert (r.kind, r.profile) == ("builtin", "tiny-random")
    assert (Path(r.source) / "config.json").is_file() and (Path(r.source) / testmodel.MARKER_FILE).is_file()


# -- the embedded Gemma model, with a fake package -------------------------------------------------


@pytest.fixture
def fake_gemma_package(monkeypatch):
    payload = b"GGUF pretend gemma bytes"
    mod = types.ModuleType(ms.GEMMA_PACKAGE)
    mod.__spec__ = importlib.machinery.ModuleSpec(ms.GEMMA_PACKAGE, None)

    def assemble(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(mod.payload)
        return Path(path)

    mod.payload = payload
    mod.assemble = assemble
    monkeypatch.setitem(sys.modules, ms.GEMMA_PACKAGE, mod)
    monkeypatch.setattr(ms, "GEMMA_GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(ms, "GEMMA_GGUF_BYTES", len(payload))
    return mod


@pytest.mark.spec("OPS-02")
def test_gemma_is_assembled_verified_converted_once(cache, fake_gemma_package, fake_convert):
    r = ms.resolve_model("gemma-3-270m")
    again = ms.resolve_model("gemma-3-270m")
    assert len(fake_convert) == 1 and again.source == r.source
    assert (r.kind, r.profile, r.source_sha256) == ("builtin", "gemma", ms.GEMMA_GGUF_SHA256)
    assert "Gemma Terms of Use" in r.licence
    out = Path(r.source)
    assert not (out / ".gguf").exists(), "the assembled GGUF is not kept next to the converted folder"
    assert ms.read_marker(out)["source_sha256"] == ms.GEMMA_GGUF_SHA256


@pytest.mark.spec("OPS-02")
def test_gemma_hash_mismatch_is_refused(cache, fake_gemma_package, fake_convert, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setattr(ms, "GEMMA_GGUF_SHA256", wrong)
    with pytest.raises(ms.HashMismatchError) as e:
        ms.resolve_model("gemma-3-270m")
    msg = str(e.value)
    assert wrong in msg and hashlib.sha256(fake_gemma_package.payload).hexdigest() in msg
    assert fake_convert == [], "nothing is converted from an unverified file"
    assert all(p.name.endswith(".lock") for p in (cache / "models").iterdir()), "no folder from an unverified file"


@pytest.mark.spec("OPS-02")
def test_gemma_size_mismatch_is_refused(cache, fake_gemma_package, fake_convert, monkeypatch):
    monkeypatch.setattr(ms, "GEMMA_GGUF_BYTES", 253_113_024)
    with pytest.raises(ms.HashMismatchError, match="253,113,024"):
        ms.resolve_model("gemma-3-270m")


def test_pinned_gemma_constants_match_the_published_file():
    assert ms.GEMMA_GGUF_SHA256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert ms.GEMMA_GGUF_BYTES == 253_113_024
    assert ms.BUILTIN_MODELS["gemma-3-270m"].profile == "gemma"


# -- clear errors (OPS-02) ---------------------------------------------------------------------------


@pytest.mark.spec("OPS-02")
def test_missing_demo_extra_says_how_to_install(cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == ms.GEMMA_PACKAGE else real(name, *a))
    with pytest.raises(ms.MissingExtraError, match=r"pip install 'cai-bootstrap\[demo\]'"):
        ms.resolve_model("gemma-3-270m")


@pytest.mark.spec("OPS-02")
def test_missing_gguf_reader_says_how_to_install(tmp_path, cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(ms.MissingExtraError, match=r"cai-bootstrap\[demo\]"):
        ms.resolve_model(str(gguf))


@pytest.mark.spec("OPS-02")
@pytest.mark.parametrize("spec", ["gemma-3-27", "tiny_random", "gpt2", "qwen"])
def test_unknown_spec_lists_known_names(spec, cache):
    with pytest.raises(ms.UnknownModelSpecError) as e:
        ms.resolve_model(spec)
    for name in ms.known_model_names():
        assert name in str(e.value)
    assert "org/name" in str(e.value)


@pytest.mark.spec("OPS-02")
@pytest.mark.parametrize("spec", ["/no/such/model", "./missing-model", "~/nowhere/x.gguf", "models/a/b", "weights.gguf"])
def test_nonexistent_path_is_a_clear_error(spec, cache):
    with pytest.raises(ms.ModelPathNotFoundError, match="does not exist"):
        ms.resolve_model(spec)


@pytest.mark.spec("OPS-02")
def test_folder_without_config_and_non_gguf_file_are_refused(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ms.ModelSourceError, match="no config.json"):
        ms.resolve_model(str(tmp_path / "empty"))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ms.ModelSourceError, match="not a .gguf"):
        ms.resolve_model(str(tmp_path / "w.bin"))
    with pytest.raises(ms.UnknownModelSpecError, match="empty model spec"):
        ms.resolve_model("  ")


# -- no half folders ------------------------------------------------------------------------------------


@pytest.mark.spec("OPS-02")
def test_failed_build_leaves_no_folder_and_next_build_succeeds(tmp_path):
    final = tmp_path / "models" / "m"

    def broken(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ms.build_once(final, {"k": 1}, broken)
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir()] == [".m.lock"], "no temporary folder is left behind"
    marker = ms.build_once(final, {"k": 1}, lambda tmp: (tmp / "config.json").write_text("{}") and {"n": 1})
    assert marker["k"] == 1 and (final / "config.json").is_file() and (final / ms.MARKER_FILE).is_file()


@pytest.mark.spec("OPS-02")
def test_killed_build_never_looks_finished(tmp_path):
    """SIGKILL in the middle of a build: the final folder must not exist, and the next build cleans up."""
    final = tmp_path / "models" / "m"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from cai_bootstrap.model_sources import build_once

        def slow(tmp):
            (tmp / "model.safetensors").write_bytes(b"half")
            Path({str(tmp_path / "started")!r}).write_text("1")
            time.sleep(60)
            return {{}}

        build_once(Path({str(final)!r}), {{"k": 1}}, slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists():
            assert time.time() < deadline and proc.poll() is None, "builder did not start"
            time.sleep(0.05)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not final.exists()
    assert any(p.name.startswith(".m.tmp-") for p in final.parent.iterdir()), "the half build stays hidden"
    ms.build_once(final, {"k": 1}, lambda tmp: {"rebuilt": True})
    assert ms.read_marker(final)["rebuilt"] is True
    assert not any(p.name.startswith(".m.tmp-") for p in final.parent.iterdir()), "stale temporaries are removed"


@pytest.mark.spec("OPS-02")
def test_concurrent_builders_build_once(tmp_path):
    final = tmp_path / "models" / "m"
    calls = []

    def slow(tmp):
        calls.append(1)
        time.sleep(0.3)
        return {}

    threads = [threading.Thread(target=ms.build_once, args=(final, {"k": 1}, slow)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and ms.read_marker(final)["k"] == 1


@pytest.mark.spec("OPS-02")
def test_outdated_marker_is_rebuilt(tmp_path):
    final = tmp_path / "m"
    ms.build_once(final, {"source_sha256": "old"}, lambda tmp: {})
    ms.build_once(final, {"source_sha256": "new"}, lambda tmp: {})
    assert ms.read_marker(final)["source_sha256"] == "new"


# -- the real thing (slow, opt-in) ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CAI_RUN_SLOW"), reason="slow: set CAI_RUN_SLOW=1 (first run converts for ~90 s)")
@pytest.mark.skipif(importlib.util.find_spec(ms.GEMMA_PACKAGE) is None, reason="needs the demo extra")
def test_real_gemma_conversion_loads_and_completes():
    from cai_bootstrap.loader import load_base_model

    r = ms.resolve_model("gemma-3-270m")
    assert ms.read_marker(r.source)["source_sha256"] == ms.GEMMA_GGUF_SHA256
    lm = load_base_model(r.source, profile=r.profile, device="cpu")
    assert lm.provenance["bos_prepended"] is True and lm.encode("Water")[0] == 2
    assert lm.provenance["sentinels"]["ok"] is True
