"""Model families: what the engine knows about an audio LLM, behind one interface."""
