"""Checking a package before anything is written: manifest, Ed25519, SHA-512."""
