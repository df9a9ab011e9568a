"""What ``polyhead predict SOURCE`` lists: a file, a folder's images or a glob, sorted; names under one root."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.client.image_sources import list_images, output_names
from shared.errors import InputError


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in ("b.jpg", "a.PNG", "notes.txt", "sub/c.png", "sub/d.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_folder_lists_its_images_sorted_without_sub_folders_or_other_files(tree):
    assert [p.name for p in list_images(tree)] == ["a.PNG", "b.jpg"]


def test_a_file_is_listed_whatever_its_suffix(tree):
    assert list_images(tree / "notes.txt") == [tree / "notes.txt"]


def test_a_glob_lists_every_file_it_matches_recursively(tree):
    found = list_images(str(tree / "**" / "*.*"))
    assert [p.relative_to(tree).as_posix() for p in found] == ["a.PNG", "b.jpg", "notes.txt", "sub/c.png", "sub/d.gif"]


@pytest.mark.parametrize(("source", "message"), [("missing", "no such file or folder"),
                                                  ("*.bmp", "matches no file"),
                                                  ("empty", "holds no image file")])
def test_a_source_with_no_image_is_an_error_naming_it(tree, source, message):
    (tree / "empty").mkdir()
    with pytest.raises(InputError, match=message) as err:
        list_images(str(tree / source))
    assert str(tree / source) in str(err.value)


def test_output_names_are_relative_to_the_common_folder_and_writable(tree):
    paths = [tree / "b.jpg", tree / "sub" / "c.png", tree / "sub" / "d.gif"]
    assert output_names(paths) == ["b.jpg", "sub/c.png", "sub/d.gif.png"]
    assert output_names([tree / "sub" / "c.png"]) == ["c.png"]
