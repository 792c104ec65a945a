// What both CUDA dispatch files (ops_cuda.cpp, int_m1_cuda.cpp) need around a
// launch: the device check, the current stream, and the launch-error check.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

namespace ncx {

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

// Every launch goes on the caller's current torch stream.
inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

}  // namespace ncx
