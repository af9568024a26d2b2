"""dlm-bench: post-train diffusion language models with competing methods and compare them honestly."""
__version__ = "0.1.0"
