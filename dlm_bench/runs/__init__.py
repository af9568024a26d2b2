"""Run folders on disk: files.py (every atomic write, append and fsync), locks.py, store.py (records),
index.py (which model made which records; the one rule for the current model).
"""
