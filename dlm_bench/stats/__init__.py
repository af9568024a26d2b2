"""Statistics from stored records only: passk.py (the estimator), metrics.py (tables, paired tests),
intervals.py (chosen by coverage), seed_level.py (across training seeds), diversity.py, embeddings.py.
"""

N_RESAMPLES = 10_000  # bootstrap resamples everywhere (compare, report, judge), so their CIs agree
