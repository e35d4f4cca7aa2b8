"""The chain engine every stage runs on: phases in order, a hashed manifest per phase, resume, gates.

A phase names the files it reads (``inputs``) and the config fields it reads
(``settings``) and returns the files it wrote; the chain records all of them, files with
their sha256, in ``<run_dir>/<label>/<phase>.json`` (PV-05). A rerun skips a phase only if
its manifest says done, every recorded file still has its hash and its settings are
unchanged, so it resumes from the last completed phase and redoes anything whose inputs
or settings changed. A gate phase that returns ``passed=False`` stops the chain with its reason.
Nothing here knows what a stage does: a stage is a list of :class:`Phase` and a config
(any pydantic model with a ``run_dir``), so a new stage reuses this module unchanged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cai_bootstrap.io_utils import atomic_write_json, read_text_file, sha256_file
from cai_bootstrap.provenance import git_info, utc_now


class ChainError(RuntimeError):
    """A phase failed or a gate said no; the message says which and why."""


class PhaseStateError(ValueError):
    """A phase manifest cannot be read; the message names it and how to recover."""


@dataclass
class PhaseResult:
    outputs: list[Path]
    passed: bool = True
    reason: str = ""
    values: dict = field(default_factory=dict)


@dataclass
class Phase:
    name: str
    description: str
    inputs: Callable[["Chain"], list[Path]]
    run: Callable[["Chain"], PhaseResult]
    gate: bool = False
    # The config fields the phase reads: a finished phase whose recorded values of these differ
    # from the current ones is redone (a changed threshold must not leave an old decision
    # standing). None: every field but those in NEVER_DECIDING.
    settings: tuple[str, ...] | None = None


# Fields that change how a run is shown or where it lives, never what it computes (the phase
# manifests live inside the run folder and name its files relative to it, so a moved run
# folder resumes).
NEVER_DECIDING = ("quiet", "run_dir")


def phase_settings(phase: Phase, config: dict) -> dict:
    """The part of a config a phase's result depends on."""
    names = phase.settings if phase.settings is not None else tuple(k for k in config if k not in NEVER_DECIDING)
    return {k: config.get(k) for k in names}


def _hashes(paths: list[Path], run_dir: Path) -> dict[str, str | None]:
    """sha256 by path; files inside the run folder are named relative to it."""
    return {_shown(Path(p), run_dir): (sha256_file(p) if Path(p).is_file() else None) for p in paths}


def _current_hash(recorded: str, run_dir: Path) -> str | None:
    """sha256 now of a file a phase manifest names: relative to the run folder, or, as manifests
    written before run files were named so recorded them, relative to the current directory."""
    for p in ((Path(recorded),) if Path(recorded).is_absolute() else (run_dir / recorded, Path(recorded))):
        if p.is_file():
            return sha256_file(p)
    return None


def _same_setting(now, then) -> bool:
    """A path setting recorded relative (before paths were made absolute where they enter) equals its absolute form."""
    if now == then:
        return True
    return isinstance(now, str) and isinstance(then, str) and os.path.isabs(now) and os.path.abspath(then) == now


def _shown(path: Path, run_dir: Path) -> str:
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


class Chain:
    """Runs phases under ``cfg.run_dir``; ``label`` names the state folder, the run lock and the log prefix."""

    def __init__(self, cfg: Any, cli: Callable[[list[str]], int] | None = None, *, label: str) -> None:
        self.cfg = cfg
        self.label = label
        self.run_dir = Path(cfg.run_dir).resolve()
        self.state_dir = self.run_dir / label
        if cli is None:
            from cai_bootstrap.cli import main as cli
        self.cli = cli
        self.log: list[dict] = []

    # paths
    def p(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def say(self, message: str) -> None:
        print(f"[{self.label}] {message}", flush=True)

    def call(self, *argv: str) -> int:
        argv = [str(a) for a in argv]
        self.say(f"cai-bootstrap {' '.join(argv)}")
        return self.cli(argv)

    def state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def is_done(self, phase: Phase) -> bool:
        sp = self.state_path(phase.name)
        if not sp.is_file():
            return False
        try:
            state = json.loads(read_text_file(sp))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise PhaseStateError(f"phase manifest {sp} is unreadable ({e}); delete it to rerun phase "
                                  f"{phase.name}") from None
        if state.get("status") != "done":
            return False
        recorded = {**state.get("inputs", {}), **state.get("outputs", {})}
        changed = [k for k, v in recorded.items() if _current_hash(k, self.run_dir) != v]
        if changed:
            self.say(f"{phase.name}: redo, files changed since it finished: {changed}")
            return False
        now = phase_settings(phase, self.cfg.model_dump(mode="json"))
        then = phase_settings(phase, state.get("config") or {})
        moved = sorted(k for k in now if not _same_setting(now[k], then.get(k)))
        if moved:
            self.say(f"{phase.name}: redo, settings changed since it finished: {moved}")
            return False
        return True

    def run(self, phases: list[Phase], *, until: str | None = None) -> dict:
        from cai_bootstrap.run_lock import run_lock

        # OPS-06: the chain holds its run directory; the phases' commands run below it in this process.
        with run_lock(self.run_dir, self.label):
            return self._run(phases, until=until)

    def _run(self, phases: list[Phase], *, until: str | None = None) -> dict:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for phase in phases:
            if self.is_done(phase):
                self.say(f"{phase.name}: already done (hashes verified), skipping")
                self.log.append({"phase": phase.name, "status": "skipped (done)"})
                if until == phase.name:
                    break
                continue
            inputs = phase.inputs(self)
            missing = [str(p) for p in inputs if not p.is_file()]
            if missing:
                raise ChainError(f"phase {phase.name}: inputs missing {missing}; an earlier phase did not finish")
            in_hashes = _hashes(inputs, self.run_dir)
            self.say(f"{phase.name}: {phase.description}")
            t0 = time.time()
            started = utc_now()
            try:
                result = phase.run(self)
            except Exception as e:  # recorded, then re-raised with the phase named
                self._write_state(phase, "error", in_hashes, {}, started, time.time() - t0, str(e), {})
                raise ChainError(f"phase {phase.name} failed: {e}") from e
            if _hashes(inputs, self.run_dir) != in_hashes:
                raise ChainError(f"phase {phase.name}: its inputs changed while it ran; rerun")
            status = "done" if result.passed else "gate_failed"
            self._write_state(phase, status, in_hashes, _hashes(result.outputs, self.run_dir), started, time.time() - t0,
                              result.reason, result.values)
            self.log.append({"phase": phase.name, "status": status, "wall_s": round(time.time() - t0, 1)})
            if not result.passed:
                raise ChainError(f"gate {phase.name} stopped the chain: {result.reason}")
            if until == phase.name:
                break
        return {"phases": self.log}

    def _write_state(self, phase, status, ins, outs, started, wall, reason, values) -> None:
        atomic_write_json(self.state_path(phase.name), {
            "phase": phase.name, "status": status, "gate": phase.gate, "started_at": started, "finished_at": utc_now(),
            "wall_s": round(wall, 2), "inputs": ins, "outputs": outs, "reason": reason, "values": values,
            "git_commit": git_info()["commit"], "config": self.cfg.model_dump(mode="json"),
        })


def gate_result(manifest: Path) -> PhaseResult:
    """A gate phase's result read back from the manifest its gate wrote (GT-05), so the chain
    records exactly what the manifest says."""
    if not manifest.is_file():
        raise ChainError(f"gate did not write its manifest {manifest}")
    m = json.loads(read_text_file(manifest))
    return PhaseResult([manifest], m["decision"] == "pass", "; ".join(m.get("reasons", [])) or m["decision"],
                       {"gate": m["gate"], "decision": m["decision"], "values": m.get("values")})


def config_files(ch: "Chain", *names: str) -> list[Path]:
    """Run files a config names (e.g. ``generate_config``): a phase lists them as inputs, as their
    contents decide its results as much as its settings do."""
    return [Path(v) for v in (getattr(ch.cfg, n) for n in names) if v is not None]


def check_phase_name(flag: str, name: str | None, known: list[str]) -> None:
    """A misspelt phase name must stop the command: ignored, it would run the whole chain."""
    if name is not None and name not in known:
        raise ChainError(f"{flag} {name!r} is not a phase; known phases: {', '.join(known)}")
