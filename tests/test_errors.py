"""The error tree: every exception of the package is drawn in errors.py and has one HTTP answer."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import adaptive_router
from adaptive_router import _errors as errors
from adaptive_router.service import ERROR_MAP, error_answer

MODULES = [
    m.name
    for m in pkgutil.walk_packages(adaptive_router.__path__, "adaptive_router.")
    if not m.name.endswith("__main__")  # runs the CLI
]
TREE = [getattr(errors, name) for name in errors.__all__]


def _package_exceptions() -> list[type[BaseException]]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("adaptive_router"):
                found.append(obj)
    return found


def test_every_exception_of_the_package_lives_in_errors() -> None:
    assert {cls.__module__ for cls in _package_exceptions()} == {"adaptive_router._errors"}


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_every_error_is_in_the_tree_and_drawn(cls: type[BaseException]) -> None:
    assert issubclass(cls, errors.RouterError)
    assert re.search(rf"^ +(│ +)*(├── |└── )?{cls.__name__}\b", errors.__doc__ or "", re.MULTILINE)


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_every_error_class_has_an_http_answer(cls: type[BaseException]) -> None:
    assert any(base in ERROR_MAP for base in cls.__mro__)


def test_no_eligible_model_answers_by_its_constraint() -> None:
    assert error_answer(errors.NoEligibleModel("max_cost_usd", "too dear")).status == 400
    assert error_answer(errors.NoEligibleModel("budget", "spent")).status == 429
    assert error_answer(errors.NoEligibleModel("available", "all open")).status == 503


def test_a_bug_is_a_500_without_details() -> None:
    answer = error_answer(KeyError("x"))
    assert (answer.status, answer.kind) == (500, "server_error")
