"""Coarse categories: every UCF-101 / HMDB-51 class in exactly one of five categories."""

from collections import Counter

import pytest

from reslstm.datasets.categories import (
    HMDB51_CATEGORIES,
    HMDB51_CATEGORY_NAMES,
    UCF101_CATEGORIES,
    UCF101_CATEGORY_NAMES,
    categories_for,
    category_names,
)
from reslstm.datasets.synthetic import SYNTHETIC_CLASSES


def test_ucf101_covers_101_classes_in_five_categories():
    assert len(UCF101_CATEGORIES) == 101
    assert set(UCF101_CATEGORIES.values()) == set(UCF101_CATEGORY_NAMES) and len(UCF101_CATEGORY_NAMES) == 5
    sizes = Counter(UCF101_CATEGORIES.values())
    assert min(sizes.values()) > 0
    assert sizes["sports"] == 50 and sizes["playing musical instruments"] == 10
    assert sizes["human-human interaction"] == 5


def test_hmdb51_covers_51_classes_in_five_categories():
    assert len(HMDB51_CATEGORIES) == 51
    assert set(HMDB51_CATEGORIES.values()) == set(HMDB51_CATEGORY_NAMES) and len(HMDB51_CATEGORY_NAMES) == 5
    sizes = Counter(HMDB51_CATEGORIES.values())
    assert min(sizes.values()) > 0
    assert sizes["facial actions"] == 4 and sizes["facial actions with object manipulation"] == 3


@pytest.mark.parametrize("name, category", [
    ("ApplyEyeMakeup", "human-object interaction"),
    ("YoYo", "human-object interaction"),
    ("BabyCrawling", "body-motion only"),
    ("HandstandPushups", "body-motion only"),  # classInd spelling (files say HandStand)
    ("WalkingWithDog", "body-motion only"),
    ("SalsaSpin", "human-human interaction"),
    ("PlayingDaf", "playing musical instruments"),
    ("Drumming", "playing musical instruments"),
    ("Skijet", "sports"),
    ("BreastStroke", "sports"),
])
def test_ucf101_spot_checks(name, category):
    assert UCF101_CATEGORIES[name] == category


@pytest.mark.parametrize("name, category", [
    ("smile", "facial actions"),
    ("smoke", "facial actions with object manipulation"),
    ("flic_flac", "general body movements"),
    ("climb_stairs", "general body movements"),
    ("ride_bike", "body movements with object interaction"),
    ("swing_baseball", "body movements with object interaction"),
    ("shake_hands", "body movements for human interaction"),
    ("sword", "body movements for human interaction"),
])
def test_hmdb51_spot_checks(name, category):
    assert HMDB51_CATEGORIES[name] == category


def test_factory_and_synthetic_categories():
    assert categories_for("UCF-101") == dict(UCF101_CATEGORIES)
    assert categories_for("hmdb51") == dict(HMDB51_CATEGORIES)
    assert category_names("hmdb_51") == HMDB51_CATEGORY_NAMES
    synthetic = categories_for("synthetic")
    assert set(synthetic) == set(SYNTHETIC_CLASSES)
    assert synthetic["grow_then_shrink"] == "order pair" and synthetic["slide_up"] == "single motion"
    with pytest.raises(ValueError, match="no categories for dataset 'kinetics'"):
        categories_for("kinetics")
    with pytest.raises(TypeError):
        UCF101_CATEGORIES["YoYo"] = "sports"  # read-only
