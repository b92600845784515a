"""The audit ledger: Merkle tree math, signed checkpoints, the append library and verification."""
