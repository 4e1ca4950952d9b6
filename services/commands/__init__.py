"""The ``deepfactor`` command line (``cli``) and what only its commands use: backtest, train,
retrain, replay, status, tail, report, the kill switch, data fetch. Commands use the daemons and
their runtime; nothing there imports a command."""
