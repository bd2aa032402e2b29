"""The live page at ``/``: a ring buffer of the last 15 minutes, its JSON endpoint, and the page itself."""
