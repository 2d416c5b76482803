"""Benchmarks and measured comparisons. Each script prints figures measured in one run."""
