"""Benchmark stage (torch-free): latency, accuracy, reports."""
