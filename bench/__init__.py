"""Benchmarks of MAIL_API, each measured side by side with a baseline: `make bench`.

Every server runs on 127.0.0.1 as a subprocess started here and stopped by its PID; every
loop is bounded in count and time. Results: a printed table and bench/results/latest.json.
"""
