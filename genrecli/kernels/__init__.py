"""Elementary kernels (linear, poly2, rbf, histogram intersection) and their explicit maps (spec section 4)."""

from genrecli.kernels.elementary import (
    KERNEL_NAMES,
    ElementaryKernel,
    hist_kernel,
    linear_kernel,
    pairwise_kernel,
    poly2_kernel,
    rbf_kernel,
)
from genrecli.kernels.maps import ExplicitMap, kpca_projection

__all__ = [
    "KERNEL_NAMES",
    "ElementaryKernel",
    "ExplicitMap",
    "hist_kernel",
    "kpca_projection",
    "linear_kernel",
    "pairwise_kernel",
    "poly2_kernel",
    "rbf_kernel",
]
