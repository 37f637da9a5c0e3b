"""The benchmark harness and its studies beside their results: `python -m benchmarks.NAME`."""
