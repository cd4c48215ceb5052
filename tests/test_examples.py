"""The Examples sections of the public API run and print what they show (the docs' examples are real)."""

from __future__ import annotations

import doctest

import pytest

import bitro as bt

MODULES = ("datasets", "io", "pp", "tl", "pl", "get", "models")


def _public():
    for module in MODULES:
        for name in getattr(bt, module).__all__:
            yield f"{module}.{name}", getattr(getattr(bt, module), name)


@pytest.mark.parametrize(("name", "obj"), list(_public()), ids=[n for n, _ in _public()])
def test_docstring_examples_run(name, obj, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    monkeypatch.setenv("MPLBACKEND", "agg")
    import matplotlib.pyplot as plt

    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests, f"bt.{name} has no docstring"
    assert tests[0].examples, f"bt.{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    plt.close("all")
    assert runner.failures == 0, f"bt.{name}: {runner.failures} failing example(s); run its doctest to see them"
