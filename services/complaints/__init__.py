"""Complaints: the public complaint entrance, its workflow, appeals and statistics (Art. 15)."""
