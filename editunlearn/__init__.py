"""editunlearn: knowledge editing methods as LLM unlearning baselines, reproduced end to end."""

__version__ = "0.1.0"
