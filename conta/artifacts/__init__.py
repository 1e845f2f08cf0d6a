"""The formats stages hand each other through a run directory: one module per format, each with
its only writer, its only reader (which validates) and its path."""
