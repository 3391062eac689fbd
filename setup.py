"""reflectioncoder: a lean, kernel-level ReflectionCoder trainer.

The Triton kernels live in the top-level `kernels/` folder and are installed as
`reflectioncoder.kernels` (never as a bare `kernels` package: one of that name is on PyPI and
transformers probes for it).
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class FreshBuildPy(build_py):
    """Copies the package into an emptied build/lib: setuptools only adds to it, so a module
    removed or renamed since an earlier build in this checkout shipped in the next wheel."""

    def run(self):
        shutil.rmtree(Path(self.build_lib) / "reflectioncoder", ignore_errors=True)
        super().run()


TRACKERS = {
    "wandb": ["wandb>=0.31,<1"],
    "mlflow": ["mlflow-skinny>=3.18,<4"],
    "trackio": ["trackio>=0.43,<1"],
}

setup(
    name="reflectioncoder",
    version="0.1.0",
    description="Fused-kernel ReflectionCoder training and sandboxed evaluation for code LLMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # triton==3.9.0 (and the lock's transformers, accelerate, numpy) need 3.11: on 3.10 pip
    # found no triton 3.9.0 wheel and stopped (tests/test_install.py)
    python_requires=">=3.11",
    # Found, not listed: a listed set missed eval.sandbox and generate in the wheel, while the
    # editable install (which maps the folder) had them (tests/test_install.py).
    packages=[
        *find_packages(include=["reflectioncoder", "reflectioncoder.*"]),
        "reflectioncoder.kernels",
    ],
    package_dir={"reflectioncoder.kernels": "kernels"},
    package_data={"reflectioncoder.construct": ["*.jsonl", "*.json"]},
    # Versions shown to work together on CPU (TRITON_INTERPRET=1) and as a GPU stack.
    install_requires=[
        "torch>=2.11",  # reflectioncoder/torch_floor.py: the lowest checked
        # the lock pins 3.9.0 (CI); 3.6 is what torch 2.11 ships with: bench.compile_check
        # compiled every kernel for sm_80 and sm_90 with it (bench/README.md)
        "triton>=3.6,<4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors",
        "deepspeed>=0.19,<0.20",
        "accelerate>=1.1",  # transformers' ZeRO-3 integration (HfDeepSpeedConfig) needs it
        "liger-kernel>=0.8,<0.9",
        "numpy",
        "pyyaml",
        "datasets",
        "pyarrow",
        "tqdm",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        # flash-attn 2.7+: the compiled attention op calls its backward kernel (2.6 reruns)
        "gpu": ["flash-attn>=2.7"],
        # FlashAttention-4 (CuTe DSL; Hopper sm_90, Blackwell sm_100): a pure-Python wheel, no
        # CUDA compiler needed. A pre-release, pinned to the version our call was written
        # against (its deps: nvidia-cutlass-dsl, quack-kernels, apache-tvm-ffi); naming the
        # exact version lets pip take it without --pre.
        "hopper": ["flash-attn-4==4.0.0b40"],
        # logging.report_to's trackers (tensorboard is always installed); tested with wandb
        # 0.31.0, mlflow-skinny 3.18.0, trackio 0.43.0.
        **TRACKERS,
        "trackers": [req for reqs in TRACKERS.values() for req in reqs],
        # convert-gguf and install-model (transformers' GGUF reader needs it); tested: 0.19.0
        "gguf": ["gguf>=0.10,<1"],
        "dev": ["pytest>=8", "pytest-benchmark", "ruff==0.17.6", "hypothesis", "gguf>=0.10,<1"]
        + [req for reqs in TRACKERS.values() for req in reqs],
        # bench/bench_eval.py's comparison; its results are recorded against this version.
        # Cut Cross-Entropy: a provider of the loss suite (CUDA; it skips on the CPU).
        "bench": ["evalplus==0.3.1", "cut-cross-entropy==25.1.1"],
    },
    cmdclass={"build_py": FreshBuildPy},
    entry_points={
        "console_scripts": ["reflectioncoder=reflectioncoder.cli:main"],
        # torch loads these into torchrun's process: a failed torchrun of a reflectioncoder
        # command ends in one line (reflectioncoder/launch_torchrun.py)
        "torchrun.handlers": [
            "reflectioncoder-one-line=reflectioncoder.launch_torchrun:rendezvous_plugin"
        ],
    },
)
