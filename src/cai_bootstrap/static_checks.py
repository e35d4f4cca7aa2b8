"""CG-07 static conformance: forbidden loads, template use and A/B scoring, found by AST.

A grep would be fooled by comments and strings and miss aliased imports; walking the
syntax tree checks what the code does. Rules:

- ``<X>.from_pretrained(...)`` where X names a tokenizer or model class (``AutoTokenizer``,
  ``AutoModel*``, ``*Tokenizer*``, ``*ForCausalLM``, ``*PreTrainedModel``) only in the loader.
  Adapter loading (``PeftModel.from_pretrained``) is not a base-model load and is allowed.
- assigning ``.chat_template`` / ``.default_chat_template`` only in the loader;
- calling ``apply_chat_template`` nowhere but the loader (which only installs a refusal);
- next-token A/B scoring only in the critic: outside it, no ``log_softmax`` call and no
  indexing of a ``.logits`` attribute (the two ways to read next-token scores).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

LOADER_MODULE = "loader.py"
CRITIC_MODULE = "critic.py"
_MODEL_CLASS_RE = re.compile(r"^(Auto(Tokenizer|Model\w*|Config)|\w*Tokenizer\w*|\w*ForCausalLM|\w*PreTrainedModel)$")
_ALLOWED_FROM_PRETRAINED = {"PeftModel", "PeftConfig", "LoraConfig", "GenerationConfig"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def _import_aliases(tree: ast.AST) -> dict[str, str]:
    """`from transformers import AutoTokenizer as AT` must not hide the load."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name.rsplit(".", 1)[-1]
    return aliases


def _base_name(node: ast.AST, aliases: dict[str, str] | None = None) -> str | None:
    if isinstance(node, ast.Name):
        return (aliases or {}).get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def check_source(source: str, path: str) -> list[Violation]:
    name = Path(path).name
    in_loader = name == LOADER_MODULE
    in_critic = name == CRITIC_MODULE
    tree = ast.parse(source, filename=path)
    aliases = _import_aliases(tree)
    found: list[Violation] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr == "from_pretrained" and not in_loader:
                base = _base_name(node.func.value, aliases)
                if base and base not in _ALLOWED_FROM_PRETRAINED and _MODEL_CLASS_RE.match(base):
                    found.append(Violation(path, node.lineno, "CG-07/load",
                                           f"{base}.from_pretrained outside the clean loader; use cai_bootstrap.loader.load_base_model"))
            elif attr == "apply_chat_template" and not in_loader:
                found.append(Violation(path, node.lineno, "CG-07/template", "apply_chat_template is forbidden for base models"))
            elif attr == "log_softmax" and not in_critic:
                found.append(Violation(path, node.lineno, "CG-07/ab-score",
                                       "next-token log-probabilities are computed only in the critic"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and aliases.get(node.func.id, node.func.id) == "log_softmax" and not in_critic:
            found.append(Violation(path, node.lineno, "CG-07/ab-score", "next-token log-probabilities are computed only in the critic"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and not in_loader:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in ("chat_template", "default_chat_template"):
                        found.append(Violation(path, node.lineno, "CG-07/template", f"assignment to .{sub.attr} outside the loader"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and not in_loader:
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in ("chat_template", "default_chat_template"):
                found.append(Violation(path, node.lineno, "CG-07/template", "setattr of a chat template outside the loader"))
        elif isinstance(node, ast.Subscript) and not in_critic:
            if isinstance(node.value, ast.Attribute) and node.value.attr == "logits":
                found.append(Violation(path, node.lineno, "CG-07/ab-score", "indexing .logits (next-token scoring) only in the critic"))
    return sorted(found, key=lambda v: v.line)


def check_tree(root: str | Path) -> list[Violation]:
    root = Path(root)
    out: list[Violation] = []
    for p in sorted(root.rglob("*.py")):
        out.extend(check_source(p.read_text(encoding="utf-8"), str(p)))
    return out


def package_root() -> Path:
    return Path(__file__).resolve().parent
