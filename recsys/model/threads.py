"""Thread settings that `implicit` needs, applied once per process."""

from __future__ import annotations

from threadpoolctl import threadpool_limits

_limits = None


def pin_blas_threads() -> None:
    """Limit BLAS to one thread for the life of the process.

    implicit parallelises over users and items with its own threads; a multi-threaded BLAS
    underneath it oversubscribes the cores (implicit warns about exactly this).
    """
    global _limits
    if _limits is None:
        # Limits apply to libraries already loaded: load implicit's and scipy's BLAS first.
        import implicit.als  # noqa: F401
        import scipy.linalg  # noqa: F401

        _limits = threadpool_limits(1, "blas")
