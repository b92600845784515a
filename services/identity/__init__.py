"""Identity: real-name verification, the publishing gate and the enforcement ladder (Art. 8, 14)."""
