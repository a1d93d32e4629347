"""Benchmarks behind ``hpsgd-bench`` and the pytest-benchmark suites in bench/."""
