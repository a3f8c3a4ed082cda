import sys

import pytest

from recsys.errors import RecsysError
from recsys.evaluation.plotting import pyplot


def test_pyplot_uses_the_non_interactive_backend():
    plt = pyplot()
    assert plt.get_backend().lower() == "agg"


def test_missing_matplotlib_is_a_user_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is absent
    with pytest.raises(RecsysError, match=r"the report needs matplotlib: pip install 'streamrec\[tools\]'"):
        pyplot("the report")
