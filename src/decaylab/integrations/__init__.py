"""Thin, optional bridges to the frameworks people train with.

Each module imports its framework and is imported only when used (``import decaylab``
imports none of them): :mod:`decaylab.integrations.hf` (Hugging Face ``Trainer``),
:mod:`decaylab.integrations.lightning` (Lightning).
"""
