"""Data and audio: decoding, manifests and folders, offline synthesis."""
