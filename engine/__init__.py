"""deepfactor's core: events, buses, config and logging. Imports nothing else of ours."""
