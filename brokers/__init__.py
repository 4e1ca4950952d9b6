"""Broker adapters behind one protocol: simulated (paper) and ccxt (live or sandbox).

Imports ``engine`` only; never ``strategies`` or ``services``.
"""
