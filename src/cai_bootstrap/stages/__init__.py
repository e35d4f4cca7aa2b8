"""Stages 1..6: the chain engine every stage runs on (:mod:`.chain`), the registry that says what
each stage is made of (:mod:`.registry`) and the lineage every model artifact carries (:mod:`.lineage`).

Importing this package loads nothing heavy; each module imports what it needs.
"""
