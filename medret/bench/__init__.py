"""Benchmarks and scale tools: `medret bench` harness, synthetic corpora, start-up probe."""
