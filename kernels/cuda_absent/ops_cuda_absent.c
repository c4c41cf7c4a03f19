/* ops_cuda_absent.c: linked instead of kernels/cuda/ when this build has no nvcc or cuDNN, so that
 * `--device cuda` fails with a clear line rather than a link error. */
#include "kernels/ops.h"

const Ops *ops_cuda(Err *err)
{
    err_set(err, "--device cuda: this build of effdet has no CUDA backend (nvcc or cuDNN was not "
                 "found when it was built; see the ✓/✗ lines that make prints)");
    return NULL;
}
