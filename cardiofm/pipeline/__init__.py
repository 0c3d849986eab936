"""Step runner and pipelines: Kaapana environment → typed params → domain functions per case."""
