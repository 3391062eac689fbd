"""reflectioncoder: fused-kernel ReflectionCoder training and sandboxed evaluation."""

import importlib.abc as _abc
import importlib.util as _util
import os as _os
import sys as _sys

__version__ = "0.1.0"


class _CheckoutKernels(_abc.MetaPathFinder):
    """`reflectioncoder.kernels` from a source checkout's top-level `kernels/` folder.

    The wheel installs that folder as `reflectioncoder/kernels`, and the editable install maps
    it. But started in the checkout's root (`python -m reflectioncoder.launch`, pytest, a
    notebook), this package is the checkout's own `reflectioncoder/` folder, which has no
    `kernels`: with a non-editable install (or none) `import reflectioncoder.kernels` failed."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != "reflectioncoder.kernels":
            return None
        init = _os.path.join(self.folder, "__init__.py")
        return _util.spec_from_file_location(name, init, submodule_search_locations=[self.folder])


def _map_checkout_kernels() -> None:
    here = _os.path.dirname(_os.path.abspath(__file__))
    folder = _os.path.join(_os.path.dirname(here), "kernels")
    # Ours only: beside an installed package, a `kernels` folder is Hugging Face's.
    ours = _os.path.isfile(_os.path.join(folder, "fused_loss.py"))
    if not _os.path.isdir(_os.path.join(here, "kernels")) and ours:
        _sys.meta_path.append(_CheckoutKernels(folder))


_map_checkout_kernels()
