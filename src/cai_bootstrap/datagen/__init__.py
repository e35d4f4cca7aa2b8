"""Stage-1 data generation (DG clauses): config, resumable phase stores, pipeline, merge."""
