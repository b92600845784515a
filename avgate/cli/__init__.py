"""The `avgate` command line: run the local stack, migrate, manage keys."""
