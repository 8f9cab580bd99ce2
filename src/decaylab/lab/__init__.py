"""The decaylab lab: train real models with each penalty and show what they did.

Imports numpy, scikit-learn, matplotlib and rich; the library (``import decaylab``) never
imports this package.
"""
