"""aoai-gateway: one OpenAI-compatible endpoint over many Azure OpenAI resources."""

__version__ = "0.1.0"
__all__ = ["__version__"]
