"""Stages 1..6: the chain engine every stage runs on (:mod:`.chain`) and the registry that says what
each stage is made of (:mod:`.registry`).

Importing this package loads nothing heavy; each module imports what it needs.
"""
