"""The daemons: one service per job on the event bus (market data, factor update, signal,
rebalance, execution, scheduler, recorder, archive) and the pieces only they use. They import
``services.runtime.loop`` and each other, never the hosts or the command line."""
