"""Critic-probe records for tests: judges with chosen AUROCs, built by the real probe functions."""

from __future__ import annotations

from cai_bootstrap.critic_probes import judge_record, with_policy


def probe_results(aurocs: dict[str, float]) -> dict:
    """A ``critic_probes`` record with the given AUROC per judge, built by the real probe functions
    (hand-made score lists: n good scores of which a share beats every bad one)."""
    judges = {}
    for name, a in aurocs.items():
        n = 20
        k = round(a * n)  # k good items above all bad ones, the rest below: AUROC k / n
        good = [10.0 + i for i in range(k)] + [-10.0 - i for i in range(n - k)]
        judges[name] = judge_record(good, [0.0] * n, accepted_good=[s > 0 for s in good], accepted_bad=[False] * n,
                                    bad_kinds=["mismatched"] * n, threshold=0.0)
    return {"probe_set": {"file": "hand-made"}, "judges": with_policy(judges)}


# A run whose judges were measured to discriminate (summaries that are meant to pass QC-09).
INFORMATIVE_PROBES_AUROC = {"instruction": 0.9, "pair": 0.9, "relevance": 0.9}
