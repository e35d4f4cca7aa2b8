"""CG-07: the source tree is checked by AST for loads, template use and A/B scoring."""

from __future__ import annotations

import textwrap

import pytest

from cai_bootstrap.static_checks import check_source, check_tree, package_root


@pytest.mark.spec("CG-07")
def test_source_tree_is_clean():
    violations = check_tree(package_root())
    assert not violations, "static conformance violations:\n" + "\n".join(map(str, violations))


SCRATCH = textwrap.dedent(
    '''
    """A module that loads a tokenizer the naive way. # AutoTokenizer.from_pretrained in a docstring is fine"""
    import torch
    from transformers import AutoTokenizer, AutoModelForCausalLM
    from transformers import AutoTokenizer as AT
    import torch.nn.functional as F

    # tok = AutoTokenizer.from_pretrained("x")   <- a comment is not a violation
    tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
    tok2 = AT.from_pretrained("x")
    tok.chat_template = "{{ messages }}"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    logits = model(torch.tensor([[1]])).logits[:, -1]
    scores = F.log_softmax(logits, dim=-1)
    setattr(tok, "chat_template", None)
    '''
)


@pytest.mark.spec("CG-07")
def test_scratch_module_violations_name_file_and_line(tmp_path):
    path = tmp_path / "scratch_module.py"
    path.write_text(SCRATCH)
    found = check_tree(tmp_path)
    lines = {(v.line, v.rule) for v in found}
    assert (9, "CG-07/load") in lines  # AutoTokenizer.from_pretrained
    assert (10, "CG-07/load") in lines  # AutoModelForCausalLM.from_pretrained
    assert (11, "CG-07/load") in lines  # aliased import
    assert (12, "CG-07/template") in lines  # chat_template assignment
    assert (13, "CG-07/template") in lines  # apply_chat_template
    assert (14, "CG-07/ab-score") in lines  # .logits indexing
    assert (15, "CG-07/ab-score") in lines  # log_softmax
    assert (16, "CG-07/template") in lines  # setattr
    assert not any(v.line in (2, 8) for v in found)  # docstring and comment
    assert str(found[0]).startswith(f"{path}:9: ")


@pytest.mark.spec("CG-07")
def test_loader_and_critic_are_the_only_exemptions():
    load = "from transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained('x')\nt.chat_template = None\n"
    assert check_source(load, "src/cai_bootstrap/loader.py") == []
    assert len(check_source(load, "src/cai_bootstrap/datagen.py")) == 2
    score = "import torch\ny = torch.log_softmax(out.logits[:, -1], -1)\n"
    assert check_source(score, "src/cai_bootstrap/critic.py") == []
    assert {v.rule for v in check_source(score, "src/cai_bootstrap/evaluation/runner.py")} == {"CG-07/ab-score"}
    adapter = "from peft import PeftModel\nm = PeftModel.from_pretrained(base, 'adapter')\n"
    assert check_source(adapter, "src/cai_bootstrap/evaluation/runner.py") == []
