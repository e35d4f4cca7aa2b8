"""OPS-04: one lock of tested versions used by every session, and a wheel that carries its data.

A fresh clone went red once because a new transformers release changed a keyword the
forward guard relied on; the lock keeps CI on the versions that were tested, and these
checks keep the lock honest: it pins everything the sessions install, every session
installs through it, the environment running this suite really holds its versions, and
an installed (non-editable) wheel runs the CLI with its own copies of the data files.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cai_bootstrap.lockfile import (
    LockFileError,
    canonical,
    differences,
    installed_versions,
    parse_pins,
    read_pins,
)

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock.txt"
GOOD = REPO / "spec_tests" / "fixtures" / "artifacts" / "good"
BROKEN = REPO / "spec_tests" / "fixtures" / "artifacts" / "broken"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _noxfile() -> ast.Module:
    return ast.parse((REPO / "noxfile.py").read_text())


def _nox_constant(name: str):
    for node in _noxfile().body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"noxfile.py defines no {name}")


def _locked_requirements() -> list:
    """Every requirement of the package and of the extras the lock covers."""
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in _nox_constant("LOCK_EXTRAS"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.spec("OPS-04")
@pytest.mark.parametrize(
    "text, ok",
    [
        ("torch==2.13.0\n    # via x\n", True),
        ("nox==2026.10.20 ; python_version >= '3.8'\n", True),
        ("torch>=2.4\n", False),  # a range is no lock
        ("torch\n", False),
        ("torch==2.13.0\ntorch==2.14.0\n", False),
    ],
)
def test_lock_lines_must_be_exact_pins(text, ok):
    if ok:
        assert parse_pins(text)
    else:
        with pytest.raises(LockFileError, match="lock:"):
            parse_pins(text)


@pytest.mark.spec("OPS-04")
def test_lock_pins_every_requirement_within_its_range():
    pins = read_pins(LOCK)
    missing, outside = [], []
    for req in _locked_requirements() + [Requirement("nox")]:  # .ci/run installs nox from the lock too
        name = canonical(req.name)
        if name not in pins:
            missing.append(name)
        elif req.specifier and not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{name}=={pins[name]} (pyproject: {req.specifier})")
    assert not missing, f"requirements/lock.txt lacks {missing}: run `nox -s lock`"
    assert not outside, f"locked versions outside pyproject's ranges: {outside}: run `nox -s lock`"
    # The CPU build and the CUDA build both satisfy the torch pin: it carries no local label.
    assert "+" not in pins["torch"]


@pytest.mark.spec("OPS-04")
def test_every_session_installs_through_the_lock():
    """Only the install helper calls session.install, and only `latest` turns the lock off."""
    tree = _noxfile()
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    raw_installs = [
        name for name, fn in funcs.items() for call in ast.walk(fn)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "install"
    ]
    assert raw_installs == ["_pip_install"], f"session.install outside the lock helper: {raw_installs}"
    helper = ast.unparse(funcs["_pip_install"])
    assert "('-c', LOCK) if locked" in helper
    unlocked = sorted(
        name for name, fn in funcs.items() for kw in ast.walk(fn)
        if isinstance(kw, ast.keyword) and kw.arg == "locked" and isinstance(kw.value, ast.Constant) and kw.value.value is False
    )
    assert set(unlocked) <= {"latest", "_install"}, unlocked
    assert _nox_constant("LOCK") == "requirements/lock.txt"
    ci = (REPO / ".ci" / "run").read_text()
    assert "-c requirements/lock.txt nox" in ci, ".ci/run must install nox from the lock"


@pytest.mark.spec("OPS-04")
def test_differences_ignore_local_build_labels():
    locked = {"torch": "2.13.0", "transformers": "5.23.0", "absent": "1.0"}
    installed = {"torch": "2.13.0+cpu", "transformers": "5.24.0"}
    assert differences(locked, installed) == {"transformers": ("5.23.0", "5.24.0")}


@pytest.mark.spec("OPS-04")
def test_this_environment_holds_the_locked_versions():
    """Under nox's locked sessions (CI), every installed package of the lock is at its pinned version."""
    lock = os.environ.get("CAI_BOOTSTRAP_LOCK")
    if not lock:
        pytest.skip("not installed by a locked nox session (CAI_BOOTSTRAP_LOCK unset)")
    diff = differences(read_pins(lock), installed_versions())
    assert not diff, f"installed versions differ from {lock}: {diff}"


def _clean_env() -> dict:
    """No PYTHONPATH (it could put the source tree in front of the wheel) and no suites override."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAI_EXPECTATIONS_DIR")}


def _wheel(tmp: Path) -> Path:
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600, env=_clean_env(), cwd=tmp,
    )
    (wheel,) = out.glob("cai_bootstrap-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The built wheel installed non-editable into a fresh venv that borrows this one's dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=_clean_env(), cwd=tmp)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300, env=_clean_env(), cwd=tmp)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=_clean_env(), cwd=tmp).stdout.strip()
    # Dependencies come from this environment, as a plain path entry: its .pth files (the
    # editable install of the source tree among them) are not processed, so only the wheel's
    # copy of cai_bootstrap can be imported.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv


@pytest.mark.spec("OPS-04", "PV-06")
def test_wheel_carries_every_runtime_data_file(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = REPO / "src" / "cai_bootstrap"
    needed = [p for sub in ("data", "configs") for p in (pkg / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.suffix == ".json" and "expectations" in p.parts for p in needed)
    missing = [str(p.relative_to(pkg.parent)) for p in needed if str(p.relative_to(pkg.parent)) not in names]
    assert not missing, f"the wheel lacks files the CLI reads at run time: {missing}"


@pytest.mark.spec("OPS-04", "PV-06")
def test_installed_wheel_validates_with_its_own_suites(installed_wheel, tmp_path):
    _, venv = installed_wheel
    env = _clean_env()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cai_bootstrap; print(cai_bootstrap.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(REPO / "src") not in where, where
    cli = str(venv / "bin" / "cai-bootstrap")
    good = subprocess.run([cli, "validate", str(GOOD)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stdout + good.stderr
    bad_dir = tmp_path / "bad"
    shutil.copytree(BROKEN / "sft_delimiter_leak", bad_dir)
    bad = subprocess.run([cli, "validate", str(bad_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1, bad.stdout + bad.stderr


@pytest.mark.spec("OPS-04")
def test_a_freeze_with_direct_references_is_still_compared():
    """`nox -s latest` reads pip freeze, which lists local installs as `name @ file://...`."""
    freeze = "torch @ file:///opt/wheels/torch-2.13.0.whl\ntransformers==5.24.0\nWARNING: something\n"
    assert parse_pins(freeze, strict=False) == {"transformers": "5.24.0"}
    with pytest.raises(LockFileError):
        parse_pins(freeze)  # a lock may hold only exact pins
