"""The training loop and what it holds: loop.py (train(), stages read top to bottom), schedule.py,
policy.py, parallel.py (FSDP2), checkpoint.py, trajectories.py (offline rollouts), pretrain.py.
"""
