"""Benchmark on the user's own boards over SSH (needs the ``remote`` extra: asyncssh).

``inventory`` (devices.yaml), ``ssh`` (verified connections), ``sync`` (send what changed,
resumable), ``boardstate`` (power/clock/thermal readers), ``bench`` (per-board run, combined
report). Importing this package imports neither asyncssh nor torch.
"""
