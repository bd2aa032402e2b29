"""Token sources: inference servers' token counters, joined with GPU energy into tokens per joule."""
