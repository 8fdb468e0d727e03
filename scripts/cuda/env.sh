# Sourced by scripts/cuda/build: points nvcc, cudarc and the linker at scripts/cuda/.toolkit.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
toolkit="$here/.toolkit"
if [ ! -x "$toolkit/bin/nvcc" ]; then
  echo "the CUDA toolkit is not installed: run scripts/cuda/setup (downloads about 1 GB of NVIDIA wheels, once)" >&2
  return 1 2>/dev/null || exit 1
fi
export CUDA_ROOT="$toolkit"
export PATH="$toolkit/bin:$PATH"
export LIBRARY_PATH="$toolkit/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Kernels are compiled for this compute capability; 90 is the H100/H200. With a GPU visible,
# its own capability is used unless CUDA_COMPUTE_CAP is set.
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.' || true)"
  export CUDA_COMPUTE_CAP="${cap:-90}"
fi
