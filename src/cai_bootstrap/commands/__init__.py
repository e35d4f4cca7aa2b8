"""CLI subcommands, one module per phase."""
