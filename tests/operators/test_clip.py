"""image_text_embedding.clip: a tiny random CLIP built from a config (no hub) gives what
transformers' get_image_features / get_text_features give called directly, in input order, and
the bundled text-to-image pipelines index photos and query them with words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embedflow as ef

from ..conftest import requires

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP (2 layers, 32 wide, 16-d projection) with a BERT tokenizer and 32 px images."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 30522,
        "eos_token_id": 102,
        "pad_token_id": 0,
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(ef.resolve_model(MINILM)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def direct(folder, images=None, texts=None):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        if images is not None:
            pixels = AutoImageProcessor.from_pretrained(folder)(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")[
                "pixel_values"
            ]
            out = model.get_image_features(pixel_values=pixels)
        else:
            batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
            out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return getattr(out, "pooler_output", out).numpy()


def test_images_equal_get_image_features(tiny_clip, sample_images):
    got = ef.dc(sample_images[:6]).image_decode().image_text_embedding.clip(model_name=tiny_clip, modality="image", batch_size=4).to_numpy()
    np.testing.assert_allclose(got, direct(tiny_clip, images=sample_images[:6]), atol=1e-5)


def test_texts_equal_get_text_features_in_order(tiny_clip, sample_texts):
    texts = sample_texts[:9]  # of different lengths: sorted into batches, back in order
    got = ef.dc(texts).image_text_embedding.clip(model_name=tiny_clip, modality="text", batch_size=4).to_numpy()
    np.testing.assert_allclose(got, direct(tiny_clip, texts=texts), atol=1e-5)
    assert got.shape == (9, 16)


def test_a_wrong_modality_or_input_says_so(tiny_clip):
    with pytest.raises(ef.ParameterError, match="modality='audio' is not one of 'image', 'text'"):
        ef.dc(["x"]).image_text_embedding.clip(model_name=tiny_clip, modality="audio")
    with pytest.raises(ef.ItemError, match="expects a str, got int"):
        ef.dc([3]).image_text_embedding.clip(model_name=tiny_clip, modality="text").to_list()


@pytest.mark.slow
def test_words_find_photos_through_the_bundled_pipelines(tiny_clip, sample_images, tmp_path):
    requires("pymilvus", "milvus")
    from embedflow.pipelines import read_pipeline, run_pipeline

    db = str(tmp_path / "photos.db")
    index = read_pipeline("text-to-image-search-index", model=tiny_clip, db=db)
    assert run_pipeline(index, progress=False).written == len(sample_images)
    search = ef.pipeline("text-to-image-search", model=tiny_clip, db=db, limit=3)
    hits = search("a photo of a cat")
    assert len(hits) == 3 and all(str(h["path"]).endswith(".jpg") for h in hits)  # random weights: the ranks mean nothing
    scores = [h["distance"] for h in hits]  # cosine similarity, best first
    assert scores == sorted(scores, reverse=True)


def test_a_server_opens_image_paths_only_under_its_root_and_treats_queries_as_text(tiny_clip):
    requires("fastapi", "serve")
    from embedflow.serve.protocol import Shape

    images = ef.dc["path"]([]).image_text_embedding.clip["path", "vec"](model_name=tiny_clip, modality="image")
    texts = ef.dc["query"]([]).image_text_embedding.clip["query", "vec"](model_name=tiny_clip, modality="text")
    assert Shape.of(images, "photos").files == {"path"}  # a path (or URL) is checked against --files-root
    text_shape = Shape.of(texts, "words")
    assert text_shape.files == frozenset() and text_shape.text_input == "query"  # /v1/embeddings works for words
