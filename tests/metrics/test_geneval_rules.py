"""GenEval's decision rules (k3eval.metrics.geneval_rules) on hand-made detections with hand-computed outcomes, one
test per rule of the official evaluate_images.py / summary_scores.py (djghosh13/geneval @ af4902f2)."""

from __future__ import annotations

import numpy as np
import pytest

from k3eval.metrics import geneval_rules as R

IDX = {n: i for i, n in enumerate(R.geneval_objects())}


def det(name: str, box, score: float, colour: str | None = None) -> np.ndarray:
    """One detection row; `colour` puts the largest logit on that colour."""
    row = np.full(R.N_COLS, np.nan)
    row[:4], row[R.SCORE], row[R.LABEL] = box, score, IDX[name]
    if colour is not None:
        row[R.COLOR0:] = 0.0
        row[R.COLOR0 + R.COLORS.index(colour)] = 5.0
    return row


def dets(*rows) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, R.N_COLS))


def test_object_names_are_cocos_with_genevals_renames():
    names = R.geneval_objects()
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    assert {"computer mouse", "tv remote", "computer keyboard"} <= set(names) and "mouse" not in names


def test_threshold_is_strict_and_counting_uses_its_own():
    d = dets(det("dog", [0, 0, 10, 10], 0.3), det("dog", [20, 0, 30, 10], 0.30001), det("cat", [0, 0, 5, 5], 0.95),
             det("cat", [9, 9, 20, 20], 0.9))
    assert R.select_objects(d, "single_object") == {"dog": [1], "cat": [2, 3]}
    # the counting task keeps only scores above 0.9 (0.9 itself is out)
    assert R.select_objects(d, "counting") == {"cat": [2]}
    assert R.select_objects(d, "counting", R.Rules(counting_threshold=0.2)) == {"dog": [1, 0], "cat": [2, 3]}


def test_most_confident_first_at_most_max_objects_ties_to_the_later_detection():
    rows = [det("cup", [i, 0, i + 1, 1], 0.5 + i / 100) for i in range(20)]
    order = R.select_objects(dets(*rows), "counting", R.Rules(counting_threshold=0.3))["cup"]
    assert order == list(range(19, 3, -1))  # 16 most confident, highest first
    tied = dets(det("cup", [0, 0, 1, 1], 0.7), det("cup", [5, 0, 6, 1], 0.7), det("cup", [9, 0, 10, 1], 0.8))
    assert R.select_objects(tied, "colors")["cup"] == [2, 1, 0]


def test_box_iou_counts_pixels_inclusively():
    # boxes 0..9 and 5..14 on both axes: 10x10 each, intersection 5x5 = 25, union 175
    assert R.box_iou([0, 0, 9, 9], [5, 5, 14, 14]) == pytest.approx(25 / 175)
    assert R.box_iou([0, 0, 9, 9], [20, 20, 29, 29]) == 0.0
    assert R.box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0


def test_nms_only_when_max_overlap_below_one():
    d = dets(det("dog", [0, 0, 9, 9], 0.9), det("dog", [5, 5, 14, 14], 0.8), det("dog", [1, 1, 10, 10], 0.7))
    assert R.select_objects(d, "two_object")["dog"] == [0, 1, 2]  # default 1.0: NMS off
    # IoU(0, 1) = 0.143 < 0.5 stays; IoU(0, 2) = 81/119 = 0.68 >= 0.5 goes
    assert R.select_objects(d, "two_object", R.Rules(max_overlap=0.5))["dog"] == [0, 1]
    assert R.select_objects(d, "two_object", R.Rules(max_overlap=0.1))["dog"] == [0]


@pytest.mark.parametrize(("box_a", "box_b", "expected"), [
    ([0, 40, 10, 50], [40, 40, 50, 50], {"left of"}),        # offset (-40, 0), shrunk by 2: (-38, 0) -> dx -0.95
    ([40, 40, 50, 50], [0, 40, 10, 50], {"right of"}),
    ([40, 0, 50, 10], [40, 40, 50, 50], {"above"}),
    ([40, 60, 50, 70], [40, 0, 50, 10], {"below"}),
    ([0, 0, 10, 10], [40, 40, 50, 50], {"left of", "above"}),  # (-38, -38)/56.57 = -0.67 on both axes
    ([0, 0, 10, 10], [2, 1, 12, 11], set()),                   # offset (-2, -1) inside the dead zone (2 each way)
    ([0, 0, 10, 10], [5, 1, 15, 11], {"left of"}),              # (-5, -1) shrunk to (-3, 0): dx = -3/5.10 = -0.59
    ([0, 0, 10, 10], [40, 20, 50, 30], {"left of"}),            # (-38, -18)/44.72: dx -0.85, dy -0.40 (not above)
])
def test_relative_position(box_a, box_b, expected):
    assert R.relative_position(box_a, box_b) == expected


def test_relative_position_edges():
    # offset (-10, 0), sizes 10 + 10: shrunk by 0.1 * 20 = 2 -> -8/10 = -0.8
    assert R.relative_position([0, 0, 10, 10], [10, 0, 20, 10]) == {"left of"}
    # a larger threshold swallows the whole offset: no relation at all
    assert R.relative_position([0, 0, 10, 10], [10, 0, 20, 10], position_threshold=0.5) == set()
    # offset (-3, -4) with zero-size boxes: dx = -0.6, dy = -0.8 -> both
    assert R.relative_position([0, 0, 0, 0], [3, 4, 3, 4], 0.1) == {"left of", "above"}
    # offset (-6, -8), widths 5 + 5 shrink x by 1: dx = -5/10 = -0.5 exactly, which is not < -0.5; dy = -0.8
    assert R.relative_position([0, 0, 5, 0], [6, 8, 11, 8], 0.1) == {"above"}


SINGLE = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
TWO = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
       "prompt": "a photo of a dog and a cat"}
COUNT = {"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}],
         "prompt": "a photo of three cups"}
COLOR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
POSITION = {"tag": "position", "include": [{"class": "bench", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["left of", 0]}],
            "prompt": "a photo of a dog left of a bench"}
ATTR = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "blue"},
                                         {"class": "cup", "count": 1, "color": "green"}],
        "prompt": "a photo of a blue car and a green cup"}


def test_single_and_two_objects():
    assert R.evaluate(SINGLE, dets(det("dog", [0, 0, 9, 9], 0.5))) == (True, "")
    assert R.evaluate(SINGLE, dets(det("dog", [0, 0, 9, 9], 0.2))) == (False, "expected dog>=1, found 0")
    ok, reason = R.evaluate(TWO, dets(det("dog", [0, 0, 9, 9], 0.5)))
    assert not ok and reason == "expected cat>=1, found 0"
    assert R.evaluate(TWO, dets(det("cat", [0, 0, 9, 9], 0.4), det("dog", [20, 0, 29, 9], 0.6)))[0]


def test_counting_include_and_exclude():
    three = [det("cup", [10 * i, 0, 10 * i + 5, 5], 0.95) for i in range(3)]
    assert R.evaluate(COUNT, dets(*three)) == (True, "")
    # a fourth confident cup trips the exclude clause
    assert R.evaluate(COUNT, dets(*three, det("cup", [40, 0, 45, 5], 0.92))) == (False, "expected cup<4, found 4")
    # a fourth cup at 0.9 does not count (counting threshold is strict), and two confident cups are too few
    assert R.evaluate(COUNT, dets(*three, det("cup", [40, 0, 45, 5], 0.9)))[0]
    assert R.evaluate(COUNT, dets(*three[:2], det("cup", [40, 0, 45, 5], 0.85))) == \
        (False, "expected cup>=3, found 2")


def test_exclude_clauses_are_ored():
    meta = {"tag": "two_object", "include": [{"class": "dog", "count": 1}],
            "exclude": [{"class": "cat", "count": 1}, {"class": "cup", "count": 2}]}
    dog = det("dog", [0, 0, 9, 9], 0.5)
    assert R.evaluate(meta, dets(dog, det("cup", [20, 0, 29, 9], 0.5)))[0]
    assert R.evaluate(meta, dets(dog, det("cat", [20, 0, 29, 9], 0.5))) == (False, "expected cat<1, found 1")
    ok, reason = R.evaluate(meta, dets(dog, det("cat", [20, 0, 29, 9], 0.5), det("cup", [0, 20, 9, 29], 0.5),
                                       det("cup", [20, 20, 29, 29], 0.5)))
    assert not ok and reason == "expected cat<1, found 1\nexpected cup<2, found 2"


def test_colour_clause_uses_the_first_count_objects():
    assert R.evaluate(COLOR, dets(det("car", [0, 0, 9, 9], 0.8, "red"))) == (True, "")
    ok, reason = R.evaluate(COLOR, dets(det("car", [0, 0, 9, 9], 0.8, "blue"), det("car", [20, 0, 29, 9], 0.5, "red")))
    assert not ok and reason == "expected red car>=1, found 0 red; and 1 blue"  # only the most confident car counts
    two = {**COLOR, "include": [{"class": "car", "count": 2, "color": "red"}]}
    ok, reason = R.evaluate(two, dets(det("car", [0, 0, 9, 9], 0.8, "red"), det("car", [20, 0, 29, 9], 0.5, "white")))
    assert reason == "expected red car>=2, found 1 red; and 1 red, 1 white"


def test_colour_attribution_checks_each_clause():
    good = dets(det("car", [0, 0, 9, 9], 0.8, "blue"), det("cup", [20, 0, 29, 9], 0.7, "green"))
    assert R.evaluate(ATTR, good) == (True, "")
    swapped = dets(det("car", [0, 0, 9, 9], 0.8, "green"), det("cup", [20, 0, 29, 9], 0.7, "blue"))
    ok, reason = R.evaluate(ATTR, swapped)
    assert reason == ("expected blue car>=1, found 0 blue; and 1 green\n"
                      "expected green cup>=1, found 0 green; and 1 blue")


def test_position_clause():
    bench, dog_left = det("bench", [40, 40, 50, 50], 0.6), det("dog", [0, 40, 10, 50], 0.6)
    assert R.evaluate(POSITION, dets(bench, dog_left)) == (True, "")
    ok, reason = R.evaluate(POSITION, dets(bench, det("dog", [40, 0, 50, 10], 0.6)))
    assert reason == "expected dog left of target, found above target"
    # inside the dead zone: no relation at all
    ok, reason = R.evaluate(POSITION, dets(bench, det("dog", [41, 40, 51, 50], 0.6)))
    assert not ok and reason == "expected dog left of target, found  target"
    # the target clause failed: no target
    ok, reason = R.evaluate(POSITION, dets(dog_left))
    assert reason == "expected bench>=1, found 0\nno target for dog to be left of"


def test_masked_crop_composites_over_grey_and_rounds_the_box():
    img = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    mask = np.zeros((6, 6), bool)
    mask[2, 2] = mask[3, 3] = True
    crop = R.masked_crop(img, mask, [1.5, 1.5, 4.5, 4.5])  # PIL rounds half to even: (2, 2, 4, 4)
    assert crop.shape == (2, 2, 3)
    np.testing.assert_array_equal(crop[0, 0], img[2, 2])
    np.testing.assert_array_equal(crop[1, 1], img[3, 3])
    np.testing.assert_array_equal(crop[0, 1], [153, 153, 153])
    np.testing.assert_array_equal(R.masked_crop(img, None, [0, 0, 2, 1]), img[:1, :2])
    assert R.masked_crop(img, None, [3, 3, 3, 3]).shape == (1, 1, 3)  # an empty box becomes one pixel


def test_zero_shot_classifier_math():
    # class 0: templates (1,0) and (1,1): normalised (1,0), (0.707,0.707) -> mean (0.854,0.354) -> normalised
    text = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 5.0]]])
    w = R.zero_shot_weights(text)
    a = np.array([1 + 1 / np.sqrt(2), 1 / np.sqrt(2)])
    np.testing.assert_allclose(w, [a / np.linalg.norm(a), [0, 1]])
    logits = R.zero_shot_logits(np.array([[0.0, 3.0]]), w)
    np.testing.assert_allclose(logits, [[100 * a[1] / np.linalg.norm(a), 100.0]])


def test_label_mapping_by_name_with_aliases_names_missing_objects():
    from k3eval.metrics.vision_models import COCO_NAMES

    mapping, missing = R.label_mapping(dict(enumerate(COCO_NAMES)))
    assert missing == [] and mapping[COCO_NAMES.index("mouse")] == IDX["computer mouse"]
    assert len(set(mapping.values())) == 80
    partial = {i: n for i, n in enumerate(COCO_NAMES) if n not in ("zebra", "toaster")}
    partial[200] = "wall-other"  # a panoptic 'stuff' class maps to nothing
    mapping, missing = R.label_mapping(partial)
    assert missing == ["zebra", "toaster"] and 200 not in mapping
    assert R.label_mapping({0: "Traffic_Light"})[0] == {0: IDX["traffic light"]}


def test_summary_scores_as_summary_scores_py():
    tags = ["single_object"] * 4 + ["counting"] * 2
    correct = [1, 1, 0, 1, 0, 0]
    prompts = ["a", "a", "b", "b", "c", "c"]
    s = R.summary_scores(tags, correct, prompts)
    assert s["tasks"] == {"single_object": 0.75, "counting": 0.0}
    assert s["overall"] == pytest.approx(0.375) and s["correct_images"] == pytest.approx(0.5)
    assert s["correct_prompts"] == pytest.approx(2 / 3) and (s["n_images"], s["n_prompts"]) == (6, 3)


def test_colour_classes_and_details():
    assert R.color_classes(ATTR) == ["car", "cup"] and R.color_classes(TWO) == []
    details = R.detected_boxes(dets(det("dog", [0, 0, 9, 9], 0.5), det("dog", [1, 1, 2, 2], 0.1)), SINGLE)
    assert details == '{"dog": [[0.0, 0.0, 9.0, 9.0, 0.5]]}'
