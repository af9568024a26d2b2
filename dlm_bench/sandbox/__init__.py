"""Untrusted (model-written) programs: launch.py (bwrap, rlimits, the warm zygote), calls.py and session.py
(verdicts computed in the harness), codec.py and runner.py (the wire format and the in-sandbox runner),
cgroup.py.
"""
