"""A Hugging Face transformers GPT-2 trained by distrib, built from a config (no download)."""
