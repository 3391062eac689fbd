# Sourced on a lent GPU (no network) before running anything of the project there:
#   source bench/gpu_env.sh
# Wheels carried in .whl/ (Liger, Cut Cross-Entropy: bench/gpu_prepare.sh downloads them) go to
# /tmp/site, and the project is imported from this checkout: pip -e without build isolation,
# or, where that leaves reflectioncoder.kernels unimportable (an old setuptools' egg-link
# ignores setup.py's package_dir), a link (reflectioncoder.kernels is the top-level kernels/).
export PYTHONUNBUFFERED=1
# No network there: nothing may wait on Hugging Face's hub (a dropped connection can hang for
# its timeout); Triton compiles for real unless the rehearsal asks otherwise.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ "${DEVICE:-cuda}" = cpu ] || export TRITON_INTERPRET=0
# The device's copy has no git history: the commit comes from the caller, else git where there
# is one (a rehearsal), else gpu_prepare.sh's note.
[ -n "${RC_COMMIT:-}" ] || RC_COMMIT=$(git rev-parse --short HEAD 2>/dev/null ||
  cat .replay/COMMIT 2>/dev/null || echo unknown)
export RC_COMMIT
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
if compgen -G ".whl/*.whl" >/dev/null; then
  for w in .whl/*.whl; do  # one by one: a wheel for another Python loses only itself
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$w" || echo "gpu_env: $w not installed"
  done
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/pip_e.log 2>&1
if ! python3 -c "import reflectioncoder.kernels" 2>/dev/null; then
  [ -e reflectioncoder/kernels ] || ln -s ../kernels reflectioncoder/kernels
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import reflectioncoder.kernels, torch; print('commit', '$RC_COMMIT', 'torch', torch.__version__)"
# bench_host_replay (gpu_call.sh's replay step) runs de58a14's and 3d82f92's own code: it needs
# what the project needs (Liger from .whl/ too) and their trees in .replay/.
python3 -c "import importlib.util as u; m = [n for n in ('liger_kernel', 'transformers', 'tokenizers', 'safetensors', 'yaml') if u.find_spec(n) is None]; print('gpu_env: missing', ', '.join(m)) if m else None"
[ -f .replay/de58a14.tar ] || git cat-file -e de58a14^{commit} 2>/dev/null \
  || echo "gpu_env: no .replay/ and no git history: the replay step fails (bench/README.md)"
