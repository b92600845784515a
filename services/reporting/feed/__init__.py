"""The regulator's feed: incident changes and signed tree heads in one resumable order."""
