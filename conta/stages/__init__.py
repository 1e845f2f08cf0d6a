"""Pipeline stages: each reads the previous stage's artifacts from the run directory and writes its own."""
