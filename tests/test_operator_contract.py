"""The operator contract, checked for every operator the installed packages register (as timm
tests every model name): it loads from its entry point, its parameters are checked when the
chain is built (names and types), its step pickles as names and values for another process
(Ray) and builds the same operator there, and it has a readable repr."""

from __future__ import annotations

import inspect
import pickle
import typing

import pytest

import embedflow as ef
from embedflow import registry
from embedflow.plan import instantiate

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def small_net():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


# Valid parameters for each operator that needs some: a new operator without an entry here
# fails test_every_registered_operator_has_an_example, so it gets the same checks.
EXAMPLES = {
    "image_decode": {},
    "image_embedding.timm": {"model_name": "resnet18", "pretrained": False},
    "text_embedding.transformers": {"model_name": MINILM},
    "normalize": {"p": 1},
    "milvus_search": {"uri": "x.db", "collection": "c"},
    "embedding.torch": {"model": small_net, "layer": -2},  # a factory: called per test
    "word_embedding.transformers": {"model_name": MINILM},
    "image_text_embedding.clip": {"model_name": "openai/clip-vit-base-patch32", "modality": "text"},
    "nearest": {"index": "index.parquet", "limit": 3},
    "quantize": {"precision": "binary"},
}

BUILTIN = sorted(n for n in ef.list_operators() if registry.operator_source(n).startswith("package embedflow "))


def example(name):
    return {k: v() if callable(v) and k == "model" else v for k, v in EXAMPLES[name].items()}


def step_of(name, params):
    ref = ef.dc([1])
    for part in name.split("."):
        ref = getattr(ref, part)
    return ref(**params).plan.steps[-1]


def test_every_registered_operator_has_an_example():
    assert len(BUILTIN) >= 7
    assert sorted(EXAMPLES) == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_operator_loads_from_its_entry_point_and_is_documented(name):
    obj = ef.get_operator(name)
    assert obj.__module__.startswith("embedflow_operators.")
    assert inspect.getdoc(obj), f"{name} has no docstring (embedflow ops shows it)"


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_parameters_fail_when_the_chain_is_built(name):
    with pytest.raises(ef.ParameterError, match=rf"{name}\(\): unexpected parameter 'no_such_param'.*Valid parameters"):
        step_of(name, {**example(name), "no_such_param": 1})


def typed_parameters(name):
    cls = ef.get_operator(name)
    hints = typing.get_type_hints(cls.__init__)
    return [p for p in inspect.signature(cls).parameters if p in hints and hints[p] is not typing.Any]


@pytest.mark.parametrize("name", [n for n in BUILTIN if typed_parameters(n)])
def test_typed_parameters_refuse_a_value_of_another_type(name):
    first = typed_parameters(name)[0]
    with pytest.raises(ef.ParameterError, match=rf"{first}=.* must be"):
        step_of(name, {**example(name), first: object()})


@pytest.mark.parametrize("name", BUILTIN)
def test_the_step_pickles_and_builds_the_same_operator_elsewhere(name):
    step = step_of(name, example(name))
    assert step.target is None  # a registered operator travels by name, not as an object
    again = pickle.loads(pickle.dumps(step))
    assert (again.name, list(again.params)) == (step.name, list(step.params))
    op = instantiate(again)
    assert type(op) is ef.get_operator(name)


@pytest.mark.parametrize("name", BUILTIN)
def test_repr_names_the_operator_and_its_parameters(name):
    op = instantiate(step_of(name, example(name)))
    text = repr(op)
    assert text.startswith(type(op).__name__ + "(")
    assert "\n" not in text
    defaults = {p.name: p.default for p in inspect.signature(type(op)).parameters.values()}
    for key, value in EXAMPLES[name].items():  # what differs from the defaults is shown
        if isinstance(value, (str, int, float, bool)) and value != defaults.get(key):
            assert f"{key}={value!r}" in text
