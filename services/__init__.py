"""The four avgate services, each its own gRPC process owning one schema."""
