"""reflectioncoder: fused-kernel ReflectionCoder training and sandboxed evaluation."""

__version__ = "0.1.0"
