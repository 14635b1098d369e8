"""k3eval: evaluation and benchmarking suite for text-to-image models (Kandinsky 3.0 / 3.1 and baselines)."""

__version__ = "0.1.0"
