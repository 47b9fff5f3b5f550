"""Hugging Face interchange: config translation, parameter names, streaming import/export."""
