"""image_decode: awkward images are converted, broken ones named with their cause."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import embedflow as ef


def decode(*items):
    return ef.dc(list(items)).image_decode().to_list()


@pytest.fixture
def rgb():
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:20] = (0, 255, 0)
    arr[:, 20:] = (0, 0, 255)
    return arr


def test_paths_pathlib_bytes_pil_and_arrays_give_the_same_pixels(tmp_path, rgb):
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    out = decode(str(path), path, path.read_bytes(), Image.fromarray(rgb), rgb)
    for img in out:
        assert img.dtype == np.uint8 and img.shape == (20, 30, 3)
        np.testing.assert_array_equal(img, rgb)


def test_real_jpegs_decode_like_pillow(sample_images):
    first = sample_images[0]
    out = decode(first)[0]
    np.testing.assert_array_equal(out, np.asarray(Image.open(first).convert("RGB")))


def test_grayscale_and_palette(tmp_path):
    gray = Image.fromarray(np.full((4, 4), 100, np.uint8), "L")
    pal = gray.convert("P")
    for img in decode(gray, pal):
        assert img.shape == (4, 4, 3) and (img == 100).all()


def test_rgba_and_la_are_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: white
    out = decode(Image.fromarray(rgba, "RGBA"), rgba)
    for img in out:
        assert tuple(img[0, 0]) == (255, 0, 0)
        assert tuple(img[0, 1]) == (255, 255, 255)
    la = Image.fromarray(np.array([[[0, 0]]], np.uint8), "LA")
    assert tuple(decode(la)[0][0, 0]) == (255, 255, 255)


def test_transparent_palette_png(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = decode(path)[0]
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (10, 20, 30)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # red in CMYK
    out = decode(path)[0]
    assert out.shape == (8, 8, 3)
    r, g, b = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_png_is_scaled(tmp_path):
    path = tmp_path / "g16.png"
    arr = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(arr).save(path)
    out = decode(path)[0][:, :, 0]
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[1, 0] in (127, 128)


def test_float_and_16_bit_arrays():
    assert decode(np.array([[0.0, 1.0]]))[0][0, :, 0].tolist() == [0, 255]
    assert decode(np.array([[0, 65535]], np.uint16))[0][0, :, 0].tolist() == [0, 255]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # wide; top-left pixel white
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = decode(path)[0]
    assert out.shape == (20, 10, 3)  # now tall
    assert out[0, -1].mean() > 200  # the white corner moved to the top right


def test_webp(tmp_path, rgb):
    path = tmp_path / "x.webp"
    Image.fromarray(rgb).save(path, lossless=True)
    np.testing.assert_array_equal(decode(path)[0], rgb)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ef.ItemError, match=r"image_decode failed on row 0.*nope.jpg.*does not exist") as err:
        decode(missing)
    assert isinstance(err.value.__cause__.__cause__, FileNotFoundError)


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG")
    with pytest.raises(ef.ItemError, match=r"notes.jpg.*not an image file"):
        decode(path)


def test_truncated_jpeg_names_the_file_and_cause(tmp_path, sample_images):
    data = sample_images[0].read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ef.ItemError, match=r"cut.jpg.*could not be decoded.*truncated"):
        decode(path)


def test_unsupported_inputs():
    with pytest.raises(ef.ItemError, match="cannot read a int"):
        decode(5)
    with pytest.raises(ef.ItemError, match=r"shape \(2, 2, 2\) is not an image"):
        decode(np.zeros((2, 2, 2)))


def test_safe_keeps_good_images_among_broken_ones(tmp_path, sample_images):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    paths = [sample_images[0], broken, tmp_path / "missing.png", sample_images[1]]
    failed = []
    with pytest.warns(UserWarning, match="2 item"):
        rows = ef.dc["path"](paths).safe(errors=failed).image_decode["path", "img"]().to_list()
    assert [r["path"] for r in rows] == [sample_images[0], sample_images[1]]
    assert sorted(f["row"] for f in failed) == [1, 2]  # decoded in parallel: any order
    assert all(f["step"] == "image_decode" for f in failed)


def test_bytes_like_input():
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, "PNG")
    assert decode(bytearray(buf.getvalue()))[0].shape == (2, 3, 3)


def test_large_images_decode_a_few_at_a_time_within_the_pixel_budget(tmp_path, monkeypatch):
    """Issue 21: threads decoding 12000x12000 PNGs at once held 3.9 GB; decodes now take turns
    when their pixels would pass the budget (EMBEDFLOW_DECODE_PIXELS)."""
    import threading
    import time

    from embedflow_operators import _pixel_budget, image_decode

    monkeypatch.setattr(image_decode, "DECODING", _pixel_budget.PixelBudget(150))  # one 100-pixel image at a time
    paths = []
    for i in range(4):
        Image.fromarray(np.full((10, 10, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    active, most, lock = [0], [0], threading.Lock()
    loaded = image_decode.load_image

    def slow_load(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        try:
            return loaded(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(image_decode, "load_image", slow_load)
    threads = [threading.Thread(target=image_decode.decode_image, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and image_decode.DECODING.held == 0


def test_a_large_image_is_shrunk_on_pillow_s_side_exactly_as_before():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    want = np.asarray(Image.fromarray(np.asarray(img)).resize((67, 100), Image.Resampling.BICUBIC))
    from embedflow_operators.image_decode import decode_image

    np.testing.assert_array_equal(decode_image(img, max_side=100), want)
