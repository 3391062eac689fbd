"""Triton kernels of reflectioncoder, imported as ``reflectioncoder.kernels``.

Public entry points:
- ``fused_linear_reflection_loss``: teacher CE + student CE + KL straight from hidden states.
"""

# With the repository root on sys.path this folder is also importable as a bare `kernels`
# package, which transformers probes for (the Hugging Face hub's `kernels`). Offer it a version
# it rejects and import nothing, so that probe stays cheap and harmless.
if __name__ == "kernels":
    __version__ = "0.0.0"
else:
    from .fused_loss import fused_linear_reflection_loss

    __all__: list[str] = ["fused_linear_reflection_loss"]
    from .mask import apply_reflection_mask as apply_reflection_mask  # data room (device mask)
    from .varlen_attention import varlen_attention as varlen_attention  # model room (packed)
