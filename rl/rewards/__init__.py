"""Reward functions: pure batched functions (prompts, completions, **meta) -> list[float], registered by name."""
