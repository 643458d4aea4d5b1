"""Segment influence for spaCy NER pipelines (Jain et al., Findings of EMNLP 2022)."""

__version__ = "0.1.0"
