"""A module that cannot be imported, for the ``python`` executor's tests."""

raise RuntimeError("this module is broken on purpose")
