"""ftflow's metric modules for `evaluate.load(path)` (see ftcore/evaluation/example_metrics.py). Each file is also a
plain module of the package, so it ships in the wheel."""
