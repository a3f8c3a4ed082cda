"""matplotlib for the tooling that draws charts, imported only when a chart is drawn.

matplotlib is not a runtime dependency (the worker image does not ship it): it comes with the
`tools` extra, and a missing install is a clear user error rather than an ImportError.
"""

from __future__ import annotations

from types import ModuleType

from recsys.errors import RecsysError


def pyplot(what: str = "charts") -> ModuleType:
    """`matplotlib.pyplot` on the non-interactive Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise RecsysError(f"{what} needs matplotlib: pip install 'streamrec[tools]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
