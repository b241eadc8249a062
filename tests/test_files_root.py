"""``--files-root``: one containment check for ``/run``'s paths and the ``/files/`` pages —
no ``..``, no absolute path, no symlink out, no sibling folder that shares the root's name as
a prefix (a string-prefix check would let ``files-secret`` through beside ``files``)."""

from __future__ import annotations

import os

import pytest

from embedflow.serve.protocol import BadRequest, file_value, under_root


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "files"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.jpg").write_bytes(b"a")
    secret = tmp_path / "files-secret"
    secret.mkdir()
    (secret / "key.txt").write_text("no")
    os.symlink(secret / "key.txt", root / "link-out.txt")
    os.symlink(root / "cats" / "a.jpg", root / "link-in.jpg")
    return root


@pytest.mark.parametrize(
    "relative", ["../files-secret/key.txt", "link-out.txt", "../files/../files-secret/key.txt", "/etc/passwd", "..", "", "cats\0.jpg"]
)
def test_paths_outside_the_root_are_refused(tree, relative):
    assert under_root(tree, relative) is None
    with pytest.raises(BadRequest, match="outside the server's files root|NUL byte") as err:
        file_value(relative, 0, "path", tree)
    assert err.value.status in (400, 403)


@pytest.mark.parametrize(("relative", "target"), [("cats/a.jpg", "cats/a.jpg"), ("cats/../cats/a.jpg", "cats/a.jpg"), ("link-in.jpg", "cats/a.jpg")])
def test_paths_inside_the_root_are_read_where_they_really_are(tree, relative, target):
    real = tree.resolve() / target
    assert under_root(tree, relative) == real
    assert file_value(relative, 0, "path", tree) == str(real)


def test_a_root_given_through_a_symlink_still_contains_its_own_files(tree, tmp_path):
    alias = tmp_path / "alias"
    os.symlink(tree, alias)
    assert under_root(alias, "cats/a.jpg") == tree.resolve() / "cats" / "a.jpg"
    assert under_root(alias, "../files-secret/key.txt") is None
