"""Benchmarks of the enhancer and the service (not tests): run as `python -m bench.NAME`.

bench/README.md says what question each one answers and where its result is kept.
"""
