"""Paired evaluation of a trained model against its base (EV-01..EV-07, PV-04).

Modules: ``evalset`` (the held-out items and their generator), ``verifiers`` (strict
success checks), ``runner`` (generation, one model at a time), ``statistics`` (paired
tests), ``report`` (the JSON, text, Markdown and chart outputs).
"""
