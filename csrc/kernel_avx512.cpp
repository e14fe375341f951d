// The kernels for x86-64 CPUs with AVX-512 (F, BW, VL, DQ): 512-bit at::vec. Built with a target
// pragma (setup.py compiles every csrc/*.cpp with the same flags) and chosen at run time by sparse_attention.cpp.
#include "sab_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include "sab_kernel_prelude.h"  // shared headers stay at the baseline ISA

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma in C++; the vector and SLEEF headers test them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __LZCNT__ 1
#define __POPCNT__ 1
#define __SSE3__ 1
#define __SSSE3__ 1
#define __SSE4_1__ 1
#define __SSE4_2__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "sab_kernel_impl.h"

namespace sab {

static constexpr KernelTable kAvx512Table{
    "avx512",
    {AVX512::kernels_for<float>(), AVX512::kernels_for<double>(), AVX512::kernels_for<c10::Half>(),
     AVX512::kernels_for<c10::BFloat16>()}};

}  // namespace sab
#pragma GCC pop_options

namespace sab {
const KernelTable* kernels_avx512() {
  return &kAvx512Table;
}
}  // namespace sab

#else
namespace sab {
const KernelTable* kernels_avx512() {
  return nullptr;
}
}  // namespace sab
#endif
