"""Image decoding for both services: the allowlist, the checks before a decoder runs, and
the decode budget."""
