"""Dataset builders: turn source files (or a seeded generator) into preference JSON lines."""
