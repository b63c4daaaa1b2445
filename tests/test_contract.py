"""The backend contract (resnet.contract): every backend provides every hook, class and builder it declares."""

from __future__ import annotations

import inspect
import types

import pytest

from resnet import contract
from resnet.registry import REGISTRY


def test_backend_fulfils_the_contract(rn):
    assert contract.contract_problems(rn) == []


def test_declaration_matches_the_registry(rn, backend_name):
    assert (rn.NAME, rn.LAYOUT, rn.INFO) == (backend_name, REGISTRY[backend_name].layout, REGISTRY[backend_name])


@pytest.mark.parametrize("hook", contract.HOOKS)
def test_hook_carries_the_contract_docstring(rn, hook):
    """Each hook is written under @hook, so it documents what the contract asks of it."""
    declared = inspect.cleandoc(getattr(contract.Hooks, hook).__doc__)
    assert getattr(rn, hook).__doc__.startswith(declared)


def test_a_missing_hook_is_named(rn, monkeypatch):
    monkeypatch.delattr(rn, "vjp")
    assert contract.contract_problems(rn) == [f"{rn.__name__}: missing hook vjp(model, x, output_grad)"]


def test_a_mis_signed_hook_is_named(rn, monkeypatch):
    monkeypatch.setattr(rn, "apply", lambda model, x: None)
    (problem,) = contract.contract_problems(rn)
    assert problem.startswith(f"{rn.__name__}: hook apply(model, x) does not match the contract's apply(model")


def test_a_missing_class_is_named(rn, monkeypatch):
    monkeypatch.delattr(rn, "PreActBottleneck")
    assert contract.contract_problems(rn) == [f"{rn.__name__}: missing PreActBottleneck"]


def test_hook_refuses_a_wrong_signature():
    with pytest.raises(TypeError, match=r"does not match the contract's build\(model, input_shape"):

        @contract.hook
        def build(model, shape):  # the contract's second parameter is input_shape
            pass


def test_hook_refuses_an_unknown_name():
    with pytest.raises(TypeError, match="not a hook of the contract"):

        @contract.hook
        def forward(model, x):
            pass


def test_a_hooks_module_without_a_listed_hook_fails_at_import():
    """A backend's hooks module lists the contract's hooks in __all__; one it does not define stops the import
    with the hook named, instead of an AttributeError later."""
    hooks = types.ModuleType("resnet.backends.torch.hooks_missing_vjp")
    hooks.__all__ = ["vjp"]
    with pytest.raises(ImportError, match=r"does not define the contract's hook vjp\(model, x, output_grad\)"):
        contract.export({"__name__": "resnet.backends.torch"}, hooks)
