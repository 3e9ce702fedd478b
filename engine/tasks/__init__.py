"""The work a job does: train, evaluate, baselines, import, prompt optimisation, demo, benchmark."""
