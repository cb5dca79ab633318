"""``edge-sdk serve``: an OpenAI-compatible fine-tuning service."""
