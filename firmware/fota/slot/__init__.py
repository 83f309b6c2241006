"""Writing a slot: the slot writer (flash only) and the zlib inflater in front of it."""
