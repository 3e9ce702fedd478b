"""Qwen2-Audio: the one model family implemented (the 7B and the local tiny model)."""
