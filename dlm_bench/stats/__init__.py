"""Statistics of stored results: Pass@k, intervals, seed-level studies, diversity."""

N_RESAMPLES = 10_000  # bootstrap resamples everywhere (compare, report, judge), so their CIs agree
