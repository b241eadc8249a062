"""Operator registry: entry points, @register, messages, plugins found only by entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

import embedflow as ef
from embedflow import registry
from embedflow.errors import OperatorLoadError, ParameterError, UnknownOperatorError

from .conftest import write_fake_distribution


def test_builtin_operators_come_from_entry_points_not_imports():
    code = (
        "import sys, embedflow as ef;"
        "assert not any(m.split('.')[0] in ('operators', 'embedflow_operators') for m in sys.modules);"
        "assert not any(m in sys.modules for m in ('torch', 'timm', 'transformers'));"
        "print(ef.list_operators());"
        "assert 'embedflow_operators.normalize' not in sys.modules;"
        "ef.get_operator('normalize');"
        "assert 'embedflow_operators.normalize' in sys.modules;"
        "assert 'embedflow_operators.image_embedding.timm' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "image_embedding.timm" in out.stdout and "text_embedding.transformers" in out.stdout
    assert registry.operator_source("normalize").startswith("package embedflow")


def test_register_a_function_and_call_it_by_name(registered):
    @registered("my.shout")
    def shout(text: str) -> str:
        return text.upper()

    assert ef.dc(["hi"]).my.shout().to_list() == ["HI"]
    assert ef.get_operator("my.shout") is shout
    assert "my.shout" in ef.list_operators("my.*")


def test_register_a_class_with_parameters(registered):
    @registered("my.add")
    class Add(ef.Operator):
        def __init__(self, amount: int = 1):
            self.amount = amount

        def preprocess(self, x):
            return x + self.amount

    assert ef.dc([1, 2]).my.add(amount=10).to_list() == [11, 12]


def test_function_operator_parameters_are_keywords(registered):
    @registered("my.suffix")
    def suffix(text, end="!"):
        return text + end

    assert ef.dc(["a"]).my.suffix(end="?").to_list() == ["a?"]


def test_unknown_operator_raises_when_the_chain_is_built_with_close_matches():
    with pytest.raises(UnknownOperatorError, match=r"'normalise'.*Did you mean 'normalize'") as err:
        ef.dc([1]).normalise
    assert "image_embedding" in str(err.value) and "text_embedding" in str(err.value)
    with pytest.raises(UnknownOperatorError, match=r"'image_embedding.tim'.*Did you mean 'timm'"):
        ef.dc([1]).image_embedding.tim
    assert not hasattr(ef.dc([1]), "no_such_operator")
    with pytest.raises(UnknownOperatorError):
        ef.get_operator("no.such")


def test_calling_a_namespace_says_which_operators_it_has():
    with pytest.raises(UnknownOperatorError, match=r"namespace.*timm"):
        ef.dc([1]).image_embedding(model_name="x")


def test_misspelt_parameter_fails_before_any_model_loads():
    with pytest.raises(
        ParameterError, match=r"unexpected parameter 'modle_name'.*Did you mean 'model_name'.*Valid parameters: model_name, pooling='mean'"
    ):
        ef.dc(["a"]).text_embedding.transformers(modle_name="x")
    with pytest.raises(ParameterError, match=r"pooling='avg' is not one of mean, cls, max, last, none"):
        ef.dc(["a"]).text_embedding.transformers(model_name="x", pooling="avg")
    with pytest.raises(ParameterError, match="keyword arguments"):
        ef.dc([1]).normalize(2)


def test_function_parameters_are_checked_too(registered):
    @registered("my.scale")
    def scale(x, factor=2):
        return x * factor

    with pytest.raises(ParameterError, match=r"unexpected parameter 'factr'.*Did you mean 'factor'.*Valid parameters: factor=2"):
        ef.dc([1]).my.scale(factr=3)


def test_duplicate_name_warns_naming_both(registered):
    @registered("my.dup")
    def first(x):
        return 1

    with pytest.warns(UserWarning, match=r"'my.dup' is defined twice.*test_registry:.*first.*second"):

        @registered("my.dup")
        def second(x):
            return 2

    assert ef.dc([0]).my.dup().to_list() == [2]


def test_invalid_names_are_refused():
    for bad in ("", "a..b", "_private", "has space", "ns._x"):
        with pytest.raises(ValueError, match="not a valid operator name"):
            ef.register(bad)


def test_plugin_found_only_through_its_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def reverse(text):\n    '''Reverse a string.'''\n    return text[::-1]\n")
    write_fake_distribution(tmp_path, "fake_plugin", "fake.reverse = fake_plugin:reverse\nfake.broken = fake_plugin:missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_entry_points()
    try:
        assert "fake.reverse" in ef.list_operators("fake.*")
        assert "fake_plugin" not in sys.modules  # listed, not imported
        assert ef.dc(["abc"]).fake.reverse().to_list() == ["cba"]
        assert registry.operator_source("fake.reverse").startswith("package fake_plugin 1.0")
        with pytest.raises(OperatorLoadError, match=r"'fake.broken' could not be loaded from package fake_plugin 1.0"):
            ef.dc(["abc"]).fake.broken()
    finally:
        monkeypatch.undo()
        sys.modules.pop("fake_plugin", None)
        registry.reload_entry_points()
    assert "fake.reverse" not in ef.list_operators()


def test_two_packages_claiming_one_name_warn(tmp_path, monkeypatch):
    for dist in ("plugin_a", "plugin_b"):
        root = tmp_path / dist
        root.mkdir()
        write_fake_distribution(root, dist, f"clash.op = {dist}:op\n")
        monkeypatch.syspath_prepend(str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.reload_entry_points()
    monkeypatch.undo()
    registry.reload_entry_points()
    messages = [str(w.message) for w in caught]
    assert any("'clash.op' is defined twice" in m and "plugin_a" in m and "plugin_b" in m for m in messages)


@pytest.mark.slow
def test_a_real_plugin_package_installed_with_pip(tmp_path):
    """End to end: build and install a tiny plugin package, then use it from a fresh process."""
    src = tmp_path / "src"
    (src / "ef_plugin_demo").mkdir(parents=True)
    (src / "ef_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent('''
        import embedflow as ef

        class Repeat(ef.Operator):
            """Repeat a string."""
            def __init__(self, times: int = 2):
                self.times = times
            def preprocess(self, text):
                return text * self.times
    ''')
    )
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ef-plugin-demo"
        version = "0.3.0"
        [project.entry-points."embedflow.operators"]
        "demo.repeat" = "ef_plugin_demo:Repeat"
    """)
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
        check=True,
        capture_output=True,
    )
    code = "import embedflow as ef; from embedflow import registry; print(ef.dc(['ab']).demo.repeat(times=3).to_list(), registry.operator_source('demo.repeat'))"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "['ababab']" in out.stdout
    assert "package ef-plugin-demo 0.3.0" in out.stdout
