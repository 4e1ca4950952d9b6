"""The daemons, their runtime, and the ``deepfactor`` command line."""
