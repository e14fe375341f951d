// The kernels for any CPU: at::vec at its baseline width (scalar fallbacks for tanh).
#include "sab_kernel_prelude.h"

#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "sab_kernel_impl.h"

namespace sab {

const KernelTable* kernels_default() {
  static constexpr KernelTable table{
      "default",
      {DEFAULT::kernels_for<float>(), DEFAULT::kernels_for<double>(), DEFAULT::kernels_for<c10::Half>(),
       DEFAULT::kernels_for<c10::BFloat16>()}};
  return &table;
}

}  // namespace sab
