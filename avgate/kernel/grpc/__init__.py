"""gRPC plumbing shared by every process: call wrapping, error mapping,
principal verification, observability and the server bootstrap."""
