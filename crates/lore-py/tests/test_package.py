"""The package imports and names its version."""

import lore


def test_version_is_the_crate_version():
    assert isinstance(lore.__version__, str)
    assert lore.__version__.count(".") == 2
