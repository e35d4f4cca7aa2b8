"""Critic quality, measured on a shipped probe set (CR-06) and turned into a filtering policy (QC-09).

On the real 270M base model the pair critic accepted every probe pair, correct or
shuffled (AUROC 0.50: pure label bias), while a relevance score separated them at 0.92.
A critic's verdicts are therefore only used to drop data once the run has shown, on items
whose right verdict is known, that they mean something. Each run scores the probes with
its own critics; AUROC (how often a good item scores above a bad one) says whether a judge
discriminates, and acceptance rates on both sides say where its threshold sits.

The math and the policy are pure functions; ``evaluate_probes`` is the thin layer that
asks the critics for scores (every log-probability is read in ``critic.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

PROBES_FILE = "critic_probes.yaml"
# QC-09: the probe AUROC a judge needs before its verdicts may drop data.
DEFAULT_AUROC_BAR = 0.75

INSTRUCTION_JUDGE = "instruction"
PAIR_JUDGE = "pair"
RELEVANCE_JUDGE = "relevance"
PAIR_JUDGES = (PAIR_JUDGE, RELEVANCE_JUDGE)
JUDGES = (INSTRUCTION_JUDGE, *PAIR_JUDGES)

BAD_INSTRUCTION_KINDS = ("vague", "impossible", "unsafe", "nonsense")
MISMATCHED = "mismatched"
BAD_PAIR_KINDS = (MISMATCHED, "truncated", "off_topic", "format_violation")
MIN_ITEMS_PER_SIDE = 60


class ProbeSetError(ValueError):
    """The probe file is malformed; the message names the item and the field to fix."""


@dataclass(frozen=True)
class ProbeItem:
    """A probe: an instruction (and a response, for pair probes) whose right verdict is ``good``."""

    kind: str
    good: bool
    instruction: str
    response: str | None = None


@dataclass(frozen=True)
class ProbeSet:
    instructions: tuple[ProbeItem, ...]
    pairs: tuple[ProbeItem, ...]
    sha256: str

    def describe(self) -> dict:
        """What the run scored, for its summary: the file's hash and the item counts per side and kind."""
        def counts(items: Sequence[ProbeItem]) -> dict:
            by_kind: dict[str, int] = {}
            for it in items:
                if not it.good:
                    by_kind[it.kind] = by_kind.get(it.kind, 0) + 1
            return {"good": sum(it.good for it in items), "bad": sum(not it.good for it in items), "bad_by_kind": by_kind}

        return {"file": PROBES_FILE, "sha256": self.sha256, "instructions": counts(self.instructions), "pairs": counts(self.pairs)}


# -- the probe set -----------------------------------------------------------------------------


def mismatched_pairs(correct: Sequence[ProbeItem]) -> list[ProbeItem]:
    """Each correct pair's instruction with the response of the pair half the list away.

    A rotation by n // 2 moves every response (n >= 2) and is the same on every run, so
    these probes are deterministic without being stored.
    """
    n = len(correct)
    if n < 2:
        raise ProbeSetError("mismatched pairs need at least two correct pairs")
    shift = n // 2
    return [ProbeItem(MISMATCHED, False, correct[i].instruction, correct[(i + shift) % n].response) for i in range(n)]


def _text(item: Mapping, key: str, where: str) -> str:
    v = item.get(key) if isinstance(item, Mapping) else None
    if not isinstance(v, str) or not v.strip():
        raise ProbeSetError(f"{where}: '{key}' must be a non-empty string")
    return v.strip()


def parse_probe_set(data: object, *, sha256: str = "") -> ProbeSet:
    """Validate the probe file's data: both sections, both sides, a kind on every item, enough items."""
    if not isinstance(data, Mapping) or not isinstance(data.get("instructions"), Mapping) or not isinstance(data.get("pairs"), Mapping):
        raise ProbeSetError(f"{PROBES_FILE}: needs 'instructions' and 'pairs' sections, each with 'good'/'correct' and 'bad' lists")

    def section(name: str, side: str, good: bool, pair: bool, bad_kinds: tuple[str, ...] | None) -> list[ProbeItem]:
        rows = data[name].get(side)
        if not isinstance(rows, list):
            raise ProbeSetError(f"{PROBES_FILE}: {name}.{side} must be a list")
        out = []
        for k, row in enumerate(rows):
            where = f"{PROBES_FILE}: {name}.{side}[{k}]"
            kind = _text(row, "kind", where)
            if bad_kinds is not None and kind not in bad_kinds:
                raise ProbeSetError(f"{where}: kind {kind!r} is not one of {list(bad_kinds)}")
            if pair:
                out.append(ProbeItem(kind, good, _text(row, "instruction", where), _text(row, "response", where)))
            else:
                out.append(ProbeItem(kind, good, _text(row, "text", where)))
        return out

    good_i = section("instructions", "good", True, False, None)
    bad_i = section("instructions", "bad", False, False, BAD_INSTRUCTION_KINDS)
    correct = section("pairs", "correct", True, True, None)
    stored_bad = section("pairs", "bad", False, True, tuple(k for k in BAD_PAIR_KINDS if k != MISMATCHED))
    bad_p = mismatched_pairs(correct) + stored_bad
    for what, n in (("good instructions", len(good_i)), ("bad instructions", len(bad_i)),
                    ("correct pairs", len(correct)), ("bad pairs", len(bad_p))):
        if n < MIN_ITEMS_PER_SIDE:
            raise ProbeSetError(f"{PROBES_FILE}: {n} {what}; an AUROC needs at least {MIN_ITEMS_PER_SIDE} per side")
    return ProbeSet(tuple(good_i + bad_i), tuple(correct + bad_p), sha256)


def load_probe_set(path: str | Path | None = None) -> ProbeSet:
    """The shipped probe set, or the file at ``path``."""
    import yaml

    raw = Path(path).read_bytes() if path is not None else resources.files("cai_bootstrap.data").joinpath(PROBES_FILE).read_bytes()
    return parse_probe_set(yaml.safe_load(raw), sha256=hashlib.sha256(raw).hexdigest())


# -- the math ----------------------------------------------------------------------------------


def auroc(good_scores: Sequence[float], bad_scores: Sequence[float]) -> float:
    """P(a good item scores above a bad one), ties counting half: the Mann-Whitney U over n_good * n_bad."""
    from scipy.stats import rankdata

    g, b = [float(x) for x in good_scores], [float(x) for x in bad_scores]
    if not g or not b:
        raise ValueError(f"AUROC needs scores on both sides, got {len(g)} good and {len(b)} bad")
    ranks = rankdata(g + b)  # average ranks: a tie between sides counts half
    u = float(sum(ranks[: len(g)])) - len(g) * (len(g) + 1) / 2
    return u / (len(g) * len(b))


def youden_threshold(good_scores: Sequence[float], bad_scores: Sequence[float]) -> float:
    """The accept-at-or-above threshold that maximizes TPR - FPR on the probes (Youden's J).

    A fixed relevance threshold of 0 accepted 57% of the bad probe pairs of Gemma-3-270m while its
    AUROC was 0.88: the judge ranks well, the cut was in the wrong place. The cut is taken from
    the probe set only (never the evaluation set); ties go to the lowest threshold, keeping more data.
    """
    g, b = [float(x) for x in good_scores], [float(x) for x in bad_scores]
    if not g or not b:
        raise ValueError(f"a probe threshold needs scores on both sides, got {len(g)} good and {len(b)} bad")
    best_t, best_j = min(g), -2.0
    for t in sorted(set(g) | set(b)):
        j = sum(x >= t for x in g) / len(g) - sum(x >= t for x in b) / len(b)
        if j > best_j:
            best_t, best_j = t, j
    return best_t


def acceptance(accepted: Sequence[bool]) -> float | None:
    return sum(bool(a) for a in accepted) / len(accepted) if accepted else None


def judge_record(good_scores: Sequence[float], bad_scores: Sequence[float], *, accepted_good: Sequence[bool],
                 accepted_bad: Sequence[bool], bad_kinds: Sequence[str], threshold: float,
                 calibration_offset: float | None = None, uncalibrated_good: Sequence[bool] | None = None,
                 uncalibrated_bad: Sequence[bool] | None = None) -> dict:
    """One judge's probe result (without ``filters``, which the policy adds)."""
    by_kind: dict[str, list[bool]] = {}
    for k, a in zip(bad_kinds, accepted_bad):
        by_kind.setdefault(k, []).append(a)
    rec = {
        "auroc": auroc(good_scores, bad_scores),
        "acceptance_good": acceptance(accepted_good),
        "acceptance_bad": acceptance(accepted_bad),
        "acceptance_bad_by_kind": {k: acceptance(v) for k, v in sorted(by_kind.items())},
        "n_good": len(good_scores),
        "n_bad": len(bad_scores),
        "n": len(good_scores) + len(bad_scores),
        "threshold": threshold,
        "calibration_offset": calibration_offset,
    }
    if uncalibrated_good is not None and uncalibrated_bad is not None:
        rec["acceptance_good_uncalibrated"] = acceptance(uncalibrated_good)
        rec["acceptance_bad_uncalibrated"] = acceptance(uncalibrated_bad)
    return rec


# -- the policy (QC-09) ------------------------------------------------------------------------


def check_bar(bar: float) -> float:
    if isinstance(bar, bool) or not isinstance(bar, (int, float)) or not 0.0 <= bar <= 1.0:
        raise ValueError(f"the probe AUROC bar must be a number in [0, 1], got {bar!r}")
    return float(bar)


def judge_policy(aurocs: Mapping[str, float | None], bar: float = DEFAULT_AUROC_BAR) -> dict[str, bool]:
    """Which judges may drop data: those whose probe AUROC reaches the bar. A judge without a
    measured AUROC (None) is uninformative, as is one below the bar."""
    bar = check_bar(bar)
    return {name: a is not None and a >= bar for name, a in aurocs.items()}


def with_policy(judges: Mapping[str, dict], bar: float = DEFAULT_AUROC_BAR) -> dict[str, dict]:
    """Probe records with ``filters`` set by the policy (recomputed, never trusted from the input)."""
    filters = judge_policy({n: r.get("auroc") for n, r in judges.items()}, bar)
    return {n: {**r, "filters": filters[n]} for n, r in judges.items()}


def pair_judges_filtering(critic_probes: Mapping | None, bar: float) -> list[str]:
    """The pair judges that clear the bar in a run's recorded probe results."""
    judges = (critic_probes or {}).get("judges") or {}
    policy = judge_policy({n: (judges.get(n) or {}).get("auroc") for n in PAIR_JUDGES if n in judges}, bar)
    return [n for n in PAIR_JUDGES if policy.get(n)]


# -- the thin layer over the critics -----------------------------------------------------------


def evaluate_probes(probes: ProbeSet, *, instruction_critic=None, pair_critic=None, relevance_judge=None,
                    bar: float = DEFAULT_AUROC_BAR, relevance_threshold_from_probes: bool = False) -> dict:
    """Score the probes with each given judge; the ``critic_probes`` record of a run's summary.

    With ``relevance_threshold_from_probes`` the relevance judge's threshold is set to the probes'
    Youden-optimal cut (recorded as ``threshold_rule``) before its acceptances are counted.
    """
    from cai_bootstrap.critic import decide

    judges: dict[str, dict] = {}

    def ab(name: str, critic, items: Sequence[ProbeItem], render) -> None:
        res = critic.score([render(it) for it in items])
        raw = [decide(r.logp_a, r.logp_b, threshold=critic.threshold, labels=critic.labels).is_good for r in res]
        good = [k for k, it in enumerate(items) if it.good]
        bad = [k for k, it in enumerate(items) if not it.good]
        judges[name] = judge_record(
            [res[k].difference for k in good], [res[k].difference for k in bad],
            accepted_good=[res[k].is_good for k in good], accepted_bad=[res[k].is_good for k in bad],
            bad_kinds=[items[k].kind for k in bad], threshold=critic.threshold,
            calibration_offset=res[0].calibration_offset if critic.calibrate else None,
            uncalibrated_good=[raw[k] for k in good], uncalibrated_bad=[raw[k] for k in bad])

    if instruction_critic is not None:
        ab(INSTRUCTION_JUDGE, instruction_critic, probes.instructions, lambda it: {"instruction": it.instruction})
    if pair_critic is not None:
        ab(PAIR_JUDGE, pair_critic, probes.pairs, lambda it: {"instruction": it.instruction, "response": it.response})
    if relevance_judge is not None:
        res = relevance_judge.score([(it.instruction, it.response) for it in probes.pairs])
        good = [r.score for r, it in zip(res, probes.pairs) if it.good]
        bad = [(r.score, it.kind) for r, it in zip(res, probes.pairs) if not it.good]
        rule = "fixed"
        if relevance_threshold_from_probes:
            relevance_judge.threshold = youden_threshold(good, [x for x, _ in bad])
            rule = "youden_j_on_probes"
        t = relevance_judge.threshold
        judges[RELEVANCE_JUDGE] = {**judge_record(
            good, [x for x, _ in bad], accepted_good=[x >= t for x in good], accepted_bad=[x >= t for x, _ in bad],
            bad_kinds=[k for _, k in bad], threshold=t), "threshold_rule": rule}
    return {"probe_set": probes.describe(), "judges": with_policy(judges, bar)}
