"""Triton kernels of reflectioncoder, imported as ``reflectioncoder.kernels``.

Public entry points:
- ``fused_linear_reflection_loss``: teacher CE + student CE + KL straight from hidden states.
"""

if __name__ == "reflectioncoder.kernels":
    from .fused_loss import fused_linear_reflection_loss

    __all__: list[str] = ["fused_linear_reflection_loss"]
    from .varlen_attention import varlen_attention as varlen_attention  # model room (packed)
else:
    # Imported as a bare `kernels`: `python -m ...`, pytest, a REPL or a notebook started in the
    # repository root put the root first on sys.path, where this folder shadows Hugging Face's
    # `kernels` package (which transformers >= 5.25 depends on and imports). The layout stays, so
    # hand the import over: the module the rest of sys.path finds replaces this one in
    # sys.modules, and the import statement returns it (importlib reads sys.modules back after
    # running this file). Without one, leave an empty namespace-like module, which transformers'
    # probe reads as "not installed" (no __file__, no __version__): nothing of ours is exported.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    def _find_elsewhere(name: str, root: str):
        """The spec of `name` found on sys.path without `root`, or None."""
        path = [p for p in _sys.path if isinstance(p, str)]
        path = [p for p in path if _os.path.realpath(p or _os.getcwd()) != root]
        spec = _machinery.PathFinder.find_spec(name, path)
        for finder in _sys.meta_path if spec is None else ():
            if finder is not _machinery.PathFinder and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, None)
                if spec is not None and spec.origin != __file__:
                    break
                spec = None
        return spec

    def _hand_over(name: str) -> None:
        root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
        spec = _find_elsewhere(name, root)
        if spec is None:
            spec = _machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = []
        module = _util.module_from_spec(spec)
        _sys.modules[name] = module
        if spec.loader is not None:
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del _sys.modules[name]
                raise

    _hand_over(__name__)
