"""Generated bad-input corpus (see corpus.py), shared by every entry point's tests."""
