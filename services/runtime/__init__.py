"""What runs the daemons: the service loop (``loop``), the one place that builds them from a
config (``assembly``), the replay's back-pressure (``quiescence``), the run directory and its
account, and the process hosts (``standalone``: one service per process, ``feed``: the replay
producer, ``paper``: every service as a thread, ``supervisor``: ``deepfactor up``).

Only ``loop`` is imported by the daemons; the rest of this room may import them, never the
command line (tests/unit/test_layering.py)."""
