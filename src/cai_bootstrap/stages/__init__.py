"""Stages: the chain engine every stage runs on (:mod:`.chain`).

Importing this package loads nothing heavy; each module imports what it needs.
"""
