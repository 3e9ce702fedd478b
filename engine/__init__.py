"""Engine: QLoRA training, logit-scoring evaluation, statistics and jobs for Qwen2-Audio.

Never imports streamlit. Heavy libraries (torch, transformers, peft, bitsandbytes) are imported
only by the modules that need them, so the dashboard can use the pure readers cheaply.
"""
