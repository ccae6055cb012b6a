"""Workflows that combine runs: compare, sweep, WiSE-FT, ensembles, bench, demo, the caption comparison and the
report over a folder of runs. Each is a function the CLI calls; each writes ordinary run directories."""
