"""Every public function follows the API conventions of DESIGN.md §1 (as scanpy's test_api does).

- object first: the first parameter is positional (the SpatialData / AnnData / list of them);
- options are keyword-only (after ``*``); at most one more positional parameter, without a default,
  is allowed for what the function is about (e.g. ``genes`` of a plot), or ``model=None`` (the model a
  step applies: ``bt.tl.predict(sdata, model)``, as ``sc.tl.ingest(adata, adata_ref)``);
- ``copy`` and ``key_added`` are keyword-only, and ``copy`` defaults to ``False``;
- a numpydoc docstring with Parameters, Returns and Examples sections, and type hints.
The checker is tested on deliberately wrong examples so it is known to catch each rule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

import bitro as bt

STEP_MODULES = ("pp", "tl", "pl")
ALL_MODULES = ("datasets", "io", "pp", "tl", "pl", "get", "models")


def convention_problems(func: Callable, *, step: bool) -> list[str]:
    """What ``func`` gets wrong; ``step=True`` for pp/tl/pl functions (object first)."""
    problems = []
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if step:
        if not positional:
            problems.append("first parameter must be the data object, passed positionally")
        extra = positional[1:]
        model_arg = len(extra) == 1 and extra[0].name == "model" and extra[0].default is None
        if len(extra) > 1 or (any(p.default is not p.empty for p in extra) and not model_arg):
            problems.append(f"options must be keyword-only (after `*`): {[p.name for p in extra]}")
    elif any(p.default is not p.empty for p in positional):
        problems.append(f"options must be keyword-only (after `*`): {[p.name for p in positional]}")
    by_name = {p.name: p for p in params}
    for name in ("copy", "key_added"):
        if name in by_name and by_name[name].kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"`{name}` must be keyword-only")
    if "copy" in by_name and by_name["copy"].default is not False:
        problems.append("`copy` must default to False")
    if any(p.annotation is p.empty for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
        problems.append("every parameter needs a type hint")
    doc = inspect.getdoc(func) or ""
    for section in ("Parameters", "Returns", "Examples"):
        if params and f"\n{section}\n---" not in doc:
            problems.append(f"docstring lacks a {section} section")
    documented = {p.name for p in params if p.name in doc}
    missing = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in documented]
    if missing:
        problems.append(f"parameters not documented: {missing}")
    return problems


def _public_functions(modules) -> list[tuple[str, Callable]]:
    out = []
    for mod_name in modules:
        module = getattr(bt, mod_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                out.append((f"{mod_name}.{name}", obj))
    return out


@pytest.mark.parametrize(("name", "func"), _public_functions(STEP_MODULES))
def test_step_functions_follow_conventions(name, func):
    assert convention_problems(func, step=True) == [], name


@pytest.mark.parametrize(("name", "func"), _public_functions(("datasets", "io", "get", "models")))
def test_other_functions_follow_conventions(name, func):
    assert convention_problems(func, step=False) == [], name


def test_every_submodule_declares_its_public_api():
    for mod_name in ALL_MODULES:
        module = getattr(bt, mod_name)
        assert isinstance(module.__all__, list), mod_name
        assert all(hasattr(module, name) for name in module.__all__), mod_name


# --- the checker itself catches each rule -------------------------------------------------------


def good(sdata: object, *, key_added: str = "x", copy: bool = False) -> None:
    """Do a step.

    Parameters
    ----------
    sdata
        Data.
    key_added
        Key.
    copy
        Return a copy.

    Returns
    -------
    None.

    Examples
    --------
    >>> good(1)
    """


def test_checker_accepts_a_conforming_function():
    assert convention_problems(good, step=True) == []


def _variant(src: str) -> Callable:
    namespace: dict = {}
    exec(src.replace("DOC", repr(good.__doc__)), namespace)
    return namespace["f"]


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("def f(*, sdata: object) -> None:\n    DOC", "first parameter"),
        ("def f(sdata: object, key_added: str = 'x', *, copy: bool = False) -> None:\n    DOC", "keyword-only"),
        ("def f(sdata: object, *, key_added: str = 'x', copy: bool = True) -> None:\n    DOC", "default to False"),
        ("def f(sdata, *, key_added: str = 'x', copy: bool = False) -> None:\n    DOC", "type hint"),
        ("def f(sdata: object, *, key_added: str = 'x', copy: bool = False) -> None:\n    'Nothing.'", "Parameters"),
        (
            "def f(sdata: object, *, key_added: str = 'x', flavour: int = 1, copy: bool = False) -> None:\n    DOC",
            "flavour",
        ),
    ],
)
def test_checker_catches_violations(src, expected):
    problems = convention_problems(_variant(src), step=True)
    assert any(expected in p for p in problems), problems


def test_checker_rejects_positional_options_outside_steps():
    def f(n_spots: int = 3) -> None:
        """Make data.

        Parameters
        ----------
        n_spots
            Spots.

        Returns
        -------
        None.

        Examples
        --------
        >>> f()
        """

    assert any("keyword-only" in p for p in convention_problems(f, step=False))
