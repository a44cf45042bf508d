"""Untrusted archives and paths: what may be extracted or written, and where."""
