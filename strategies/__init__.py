"""The alpha: factor library and preprocessing, LSTM models, training, baseline weightings.

Imports ``engine`` only; never ``brokers`` or ``services``.
"""
