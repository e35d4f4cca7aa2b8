"""Preference optimization (Stage 2): preference pairs and DPO-family training on them.

Modules, one concern each:

- ``schema``: the pair record (PV-06), its fields and its pure validation;
- ``qc``: the pair QC summary (negative-type shares, margin gaps, length ratios) and its verdict;
- ``run_dir``: a pairs run directory (pairs, rejects, QC summary, manifest pinning them);
- ``negatives``: hard negatives made on purpose from a chosen answer (PO-02);
- ``pairs``: Best-of-N ranking and pair selection (PO-01), pure, plus a thin runner;
- ``config``: the typed DPO run configuration (beta range, loss selection);
- ``train_dpo``: the data gate, the Stage-1 model as reference, trl's trainer, the manifest (PO-03).
"""
