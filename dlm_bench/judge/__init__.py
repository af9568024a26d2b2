"""The LLM judge of path diversity: client.py (any OpenAI-compatible endpoint, cached), prompt.py (+
prompts/), pairs.py (two methods), seed_pairs.py (across training seeds).
"""
