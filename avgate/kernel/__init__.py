"""The shared kernel: settings, errors, caller identity, logging, tracing,
metrics, the database and the gRPC server bootstrap used by every process."""
