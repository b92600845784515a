"""Screening: hash banks, classifiers on Triton, verdicts and labels for uploaded media (Art. 9-12)."""
