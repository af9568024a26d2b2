"""The report from stored records: build.py (figures 1-2, tables, report.md), common.py, style.py,
transfer.py (figure 3), seed_level.py.
"""
