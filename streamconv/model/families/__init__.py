"""One description per model family (description.py), registered in registry.py; the
built-in families are in llama.py (LLaMA 1-3.x) and llama4.py."""
