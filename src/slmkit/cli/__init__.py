"""The `slmkit` command line: thin parsing into the same config dataclasses the Python API takes."""
