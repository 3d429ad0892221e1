"""Everything the lab shows a person: terminal tables and progress, and rendered reports.

The only package that prints or renders; the runtime logs with `logging` and returns data.
"""
