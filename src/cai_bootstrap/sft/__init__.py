"""Supervised fine-tuning (Stage 1): response-only loss, a hard data gate, QLoRA on CUDA.

Modules, one concern each:

- ``masking``: token-exact labels (-100 on the prompt, the response and one EOS trained);
- ``data_gate``: the dataset's manifest, hashes, QC verdict and expectation suite, and the
  leakage check against the held-out eval set, all before any model loads;
- ``config``: the typed run configuration with the SFT-04 defaults and ranges;
- ``preflight``: device, memory, bf16 and output checks before a GPU run;
- ``train``: wiring of the above into a resumable trainer run with its manifest.
"""
