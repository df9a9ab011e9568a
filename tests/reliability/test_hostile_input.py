"""Property tests: malformed input gives the project's clear error, never another exception.

Example counts are modest (CI has 2 cores). Hostile inputs that once escaped as the wrong
exception are kept as explicit regression cases in ``KNOWN_*``.
"""

import dataclasses
import json
import tempfile
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from serving.client.protocol import prepare_batch, to_images
from shared.errors import ConfigError, DataError, InputError
from transfer.config import PolyheadConfig, config_from_dict, load_config
from transfer.data.coco import CocoTask, DataWarning, load_coco

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values (NaN/Infinity, which Python's json reads, are regression cases in KNOWN_COCO_BUGS)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | finite | st.text(max_size=8)
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)


def _maybe(valid, junk=json_values):
    return st.one_of(valid, junk)


image_entries = st.fixed_dictionaries(
    {
        "id": _maybe(st.integers(0, 5)),
        "file_name": _maybe(st.sampled_from(["a.png", "b.jpg", "empty.png", "../outside.png", ""])),
        "width": _maybe(st.sampled_from([1, 64, 64.0, 0, -3, 1e300])),
        "height": _maybe(st.just(64) | st.integers(-2, 100)),  # 64: the size of the real files
    }
)
ann_entries = st.fixed_dictionaries(
    {
        "id": _maybe(st.integers(0, 5)),
        "image_id": _maybe(st.integers(0, 5)),
        "category_id": _maybe(st.integers(0, 3)),
        "bbox": _maybe(st.lists(st.floats(-10, 100) | st.integers(-10, 100), min_size=4, max_size=4)),
        "iscrowd": _maybe(st.sampled_from([0, 1, 1.0, True, 2])),
    }
)
cat_entries = st.fixed_dictionaries({"id": _maybe(st.integers(0, 3)), "name": _maybe(st.sampled_from(["car", ""]))})
coco_like = st.fixed_dictionaries(
    {
        "images": _maybe(st.lists(_maybe(image_entries), max_size=3)),
        "annotations": _maybe(st.lists(_maybe(ann_entries), max_size=3)),
        "categories": _maybe(st.lists(_maybe(cat_entries), max_size=3)),
    }
) | json_values


def _load_coco_text(data: bytes) -> CocoTask | None:
    """Write ``data`` as train.json beside real image files; load_coco must answer or raise DataError."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        for name in ("a.png", "b.jpg"):  # real 64x64 files: load_coco reads every header
            Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "images" / name)
        (root / "images" / "empty.png").write_bytes(b"")
        path = root / "task" / "train.json"
        path.parent.mkdir()
        path.write_bytes(data)
        try:
            return load_coco(path, root / "images")
        except DataError as err:
            assert str(path) in str(err)  # messages name the file
            return None


_VALID_WITH_FIXES = {  # a loadable document whose boxes need clipping and dropping
    "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [-5.0, 60, 10, 10]},
                    {"id": 2, "image_id": 1, "category_id": 0, "bbox": [70, 0, 3, 3], "iscrowd": 1}],
    "categories": [{"id": 0, "name": "car"}],
}


@SETTINGS
@given(coco_like)
@example(_VALID_WITH_FIXES)
def test_load_coco_on_arbitrary_json_gives_a_task_or_data_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # counted fixes are expected here
        task = _load_coco_text(json.dumps(data).encode())
    if task is not None:  # every box kept lies inside its image with a positive area
        assert task.categories
        for image_id, anns in [*task.annotations.items(), *task.crowd.items()]:
            im = task.images[image_id]
            for a in anns:
                x, y, w, h = a.bbox
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im.width and y + h <= im.height


def test_hostile_example_is_loaded_with_its_fixes_counted():
    with pytest.warns(DataWarning, match="1 box clipped to their image, 1 degenerate box dropped"):
        task = _load_coco_text(json.dumps(_VALID_WITH_FIXES).encode())
    assert task is not None and task.fixes.clipped == (1,) and task.fixes.dropped == (2,)


def _coco_with_width(width: str) -> bytes:
    image = {"id": 1, "file_name": "a.png", "width": "WIDTH", "height": 4}
    text = json.dumps({"images": [image], "annotations": [], "categories": [{"id": 1, "name": "car"}]})
    return text.replace('"WIDTH"', width).encode()


KNOWN_COCO_BUGS = [
    pytest.param(b"\xff\xfe not utf-8", id="bad-utf8"),
    pytest.param(b"[" * 100_000, id="deep-nesting"),
    pytest.param(_coco_with_width("Infinity"), id="width-inf"),
    pytest.param(_coco_with_width("NaN"), id="width-nan"),
]


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b'{"images": 1}', _coco_with_width("-1"), _coco_with_width("4").replace(b"a.png", b"empty.png"),
     *KNOWN_COCO_BUGS],
    ids=["empty", "null", "wrong-type", "width-negative", "empty-image-file", *(p.id for p in KNOWN_COCO_BUGS)],
)
def test_load_coco_on_hostile_bytes_gives_data_error(data):
    assert _load_coco_text(data) is None


# YAML: arbitrary documents, and mappings over the config's own keys with arbitrary values
def _config_like(cls: type, depth: int = 0) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        fields[f.name] = _config_like(tp, depth + 1) if dataclasses.is_dataclass(tp) else json_values | st.just(
            f.default if f.default is not dataclasses.MISSING else None
        )
    return st.fixed_dictionaries({}, optional={**fields, "bogus": json_values})


def _assert_typed(cfg: object) -> None:
    """Every field of an accepted config has its annotated type."""
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), typing.get_type_hints(type(cfg))[f.name]
        if dataclasses.is_dataclass(tp):
            _assert_typed(value)
        elif tp in (int, str, bool):
            assert type(value) is tp, (f.name, value)


@SETTINGS
@given(_config_like(PolyheadConfig) | json_values)
def test_config_from_arbitrary_mapping_gives_config_or_config_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError:
        return
    assert isinstance(cfg, PolyheadConfig)


@SETTINGS
@given(_config_like(PolyheadConfig))
def test_accepted_config_int_str_bool_fields_have_their_annotated_types(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError:
        return
    _assert_typed(cfg)  # float fields: see test_config_rejects_known_bad_mappings


@pytest.mark.parametrize(
    "raw",
    [
        {"input_size": 100},
        {"data": {"tasks": "cars"}},
        pytest.param({1: 2, "a": 3}, id="mixed-keys"),
        pytest.param({"train": {"lr": "fast"}}, id="str-float"),
    ],
)
def test_config_rejects_known_bad_mappings(raw):
    with pytest.raises(ConfigError):
        config_from_dict(raw)


@SETTINGS
@given(st.text(max_size=80) | _config_like(PolyheadConfig).map(lambda d: yaml.safe_dump(d)))
@example("input_size: !!python/object/apply:os.system ['true']")
@example("a: &x [*x]")
def test_load_config_on_arbitrary_yaml_gives_config_or_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "polyhead.yaml"
        path.write_text(text)
        try:
            assert isinstance(load_config(path), PolyheadConfig)
        except ConfigError as err:
            assert str(path) in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b"input_size: [",
        pytest.param(b"\xff\xfe: 1", id="bad-utf8"),
        pytest.param(b"[" * 50_000, id="deep-nesting"),
    ],
)
def test_load_config_on_hostile_bytes_gives_config_error(tmp_path, data):
    path = tmp_path / "polyhead.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match="polyhead.yaml"):
        load_config(path)


def test_load_config_on_a_directory_gives_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


# client images: any array, dtype or shape is accepted (and then letterboxes) or an InputError
dtypes = hnp.scalar_dtypes() | st.just(np.dtype(object)) | st.just(np.dtype(np.uint8))
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
uint8_images = hnp.arrays(np.uint8, st.tuples(st.integers(0, 70), st.integers(0, 70), st.integers(1, 4)))
images_args = arrays | uint8_images | st.lists(arrays | uint8_images, max_size=3) | scalars


@settings(max_examples=120, deadline=None)
@given(images_args)
@example(np.zeros((1, 300, 3), np.uint8))
@example(np.zeros((0, 8, 8, 3), np.uint8))
@example(np.zeros((8, 8, 3), np.uint8)[::-1, ::2])
def test_client_image_input_is_accepted_or_input_error(images):
    try:
        accepted = to_images(images)
    except InputError as err:
        assert "image" in str(err) or "detect()" in str(err)
        return
    assert accepted and all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in accepted)
    batch, infos = prepare_batch(accepted, 64)
    assert batch.shape == (len(accepted), 3, 64, 64) and len(infos) == len(accepted)
