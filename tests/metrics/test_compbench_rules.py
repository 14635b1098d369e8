"""T2I-CompBench's scoring rules (k3eval.metrics.compbench_rules) on hand-made answers, detections, depths and
parses with hand-computed outcomes, one test per official script (Karine-Huang/T2I-CompBench @ 1b709499)."""

from __future__ import annotations

import numpy as np
import pytest

from k3eval.metrics import compbench_rules as C
from k3eval.metrics.phrases import Token


def toks(text: str) -> list[Token]:
    """'The/DET cat/NOUN ./PUNCT' -> tokens (a space after each, except before punctuation)."""
    parts = [p.rsplit("/", 1) for p in text.split()]
    return [Token(w, pos, i + 1 < len(parts) and parts[i + 1][1] != "PUNCT") for i, (w, pos) in enumerate(parts)]


# ---- BLIP_vqa.py ---------------------------------------------------------------------------------------------------
def test_questions_are_noun_chunks_normalised_like_blip():
    assert C.pre_question("A (Red) Car; on: the ~road!?") == "a red car on the road?"
    chunks = ["A red car", "the left", "a blue bench", "top"]
    assert C.blip_questions("...", chunks) == ["a red car?", "a blue bench?"]
    assert len(C.blip_questions("...", [f"thing {i}" for i in range(12)])) == 8


def test_image_score_is_the_rounded_product_of_yes_probabilities():
    assert C.blip_image_score([0.9, 0.8]) == 0.72
    assert C.blip_image_score([]) == 1.0  # no question: every slot counts 1
    # each answer is written with 4 decimals first: 0.12344 -> 0.1234, 0.99996 -> 1.0000
    assert C.blip_image_score([0.12344, 0.99996]) == 0.1234
    # only the first 8 questions count
    assert C.blip_image_score([0.5] * 8 + [0.0]) == pytest.approx(0.0039)  # 0.5 ** 8 = 0.00390625 -> 0.0039


# ---- the detection frame -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(512, 512), (1024, 768), (768, 1024), (640, 480), (300, 1000), (1000, 999)])
def test_detection_frame_is_torchvisions_resize(size):
    from PIL import Image
    from torchvision.transforms import Resize

    out = Resize(size=479, max_size=480)(Image.new("RGB", size))
    assert C.detection_frame(*size) == out.size


def test_detection_frame_by_hand():
    assert C.detection_frame(512, 512) == (479, 479)
    # short side 768 -> 479, long 1024 -> 638 > 480: rescaled to long 480, short int(480 * 479 / 638) = 360
    assert C.detection_frame(1024, 768) == (480, 360)


# ---- 2D_spatial_eval.py ------------------------------------------------------------------------------------------
def test_locality_is_the_first_vocabulary_entry_found():
    assert C.locality("a dog on the left of a cat", C.SPATIAL_2D) == "on the left of"
    assert C.locality("a dog near a cat next to a bed", C.SPATIAL_2D) == "next to"  # vocabulary order, not text
    assert C.locality("a cat hidden by a box", C.SPATIAL_3D) == "hidden"
    assert C.locality("a cat", C.SPATIAL_2D) is None


@pytest.mark.parametrize(("relation", "box1", "box2", "expected"), [
    ("on the left of", [0, 0, 10, 10], [100, 0, 110, 10], 1.0),             # dx = 100 > 0, no overlap
    ("on the left of", [100, 0, 110, 10], [0, 0, 10, 10], 0.0),             # wrong side
    ("on the left of", [0, 0, 10, 10], [20, 100, 30, 110], 0.0),            # |dy| > |dx|
    ("on the left of", [0, 0, 10, 10], [5, 0, 15, 10], 0.1 / (50 / 150)),  # overlap: IoU 50/150 -> 0.1 / IoU
    ("on the right of", [100, 0, 110, 10], [0, 0, 10, 10], 1.0),
    ("on the top of", [0, 0, 10, 10], [0, 100, 10, 110], 1.0),             # dy = 100 > 0: 1 above 2
    ("on the bottom of", [0, 100, 10, 110], [0, 0, 10, 10], 1.0),
    ("on the bottom of", [0, 0, 10, 10], [0, 100, 10, 110], 0.0),
    ("next to", [0, 0, 10, 10], [140, 300, 150, 310], 1.0),                 # |dx| = 140 < 150
    ("near", [0, 0, 10, 10], [300, 600, 310, 610], 150 / 600),              # both far: 150 / max
    ("on top of", [0, 0, 10, 10], [0, 100, 10, 110], 0.0),                 # in the vocabulary, not in the rule
    (None, [0, 0, 10, 10], [0, 100, 10, 110], 0.0),
])
def test_position_score(relation, box1, box2, expected):
    assert C.position_score(relation, box1, box2) == pytest.approx(expected)


def test_position_score_3d_uses_depth_and_overlap():
    a, b = [0, 0, 10, 10], [0, 0, 10, 10]          # IoU 1 > 0.5
    half = [0, 0, 10, 10], [5, 0, 15, 10]           # IoU 50/150 = 1/3: score IoU / 0.5 = 2/3
    assert C.position_score("in front of", a, b, depth1=0.8, depth2=0.2) == 1.0
    assert C.position_score("in front of", a, b, depth1=0.2, depth2=0.8) == 0.0
    assert C.position_score("behind", a, b, depth1=0.2, depth2=0.8) == 1.0
    assert C.position_score("hidden", *half, depth1=0.1, depth2=0.9) == pytest.approx(2 / 3)
    assert C.position_score("in front of", *half, depth1=0.1, depth2=0.9) == 0.0
    assert C.position_score("in front of", [0, 0, 10, 10], [20, 0, 30, 10], depth1=0.9, depth2=0.1) == 0.0  # IoU 0
    assert C.position_score("behind", a, b, depth1=float("nan"), depth2=0.5) == 0.0


def test_spatial_2d_score():
    dets = np.array([[100, 0, 110, 10, 0.9, 1], [0, 0, 10, 10, 0.8, 0], [200, 0, 210, 10, 0.5, 0]])
    labels = ["cat", "dog", "dog"]
    # dog (first = most confident: row 1) left of cat (row 0): 0.25*0.8 + 0.25*0.9 + 1/2 = 0.925
    assert C.spatial_2d_score("on the left of", "dog", "cat", labels, dets) == pytest.approx(0.925)
    # wrong relation: 0.425 < 0.5 -> 0
    assert C.spatial_2d_score("on the right of", "dog", "cat", labels, dets) == 0.0
    # one object only: 0.25 x conf < 0.5 -> 0 as well
    assert C.spatial_2d_score("on the left of", "dog", "bird", labels, dets) == 0.0
    assert C.spatial_2d_score("on the left of", "bird", "cow", labels, dets) == 0.0


def test_first_last_nouns_and_person():
    t = toks("a/DET girl/NOUN on/ADP the/DET left/NOUN of/ADP a/DET teddy/NOUN bear/NOUN")
    assert C.first_last_nouns(t) == ("girl", "bear")
    assert (C.person("girl"), C.person("woman"), C.person("bear")) == ("person", "person", "bear")
    assert C.first_last_nouns(toks("a/DET red/ADJ")) == (None, None)


def test_complex_objects_around_prepositions():
    t = toks("The/DET striped/ADJ cat/NOUN lay/VERB next/ADJ to/ADP the/DET soft/ADJ grey/ADJ blanket/NOUN ./PUNCT")
    assert C.complex_objects(t) == ("cat", "blanket")
    t = toks("The/DET rug/NOUN was/AUX on/ADP top/NOUN of/ADP the/DET wooden/ADJ floor/NOUN ./PUNCT")
    assert C.complex_objects(t) == ("rug", "floor")  # "on top of" over 3 tokens; the next NOUN is floor, not top
    # no noun after the preposition: the first PROPN not followed by another PROPN
    t = toks("A/DET dog/NOUN near/ADP Paris/PROPN ./PUNCT")
    assert C.complex_objects(t) == ("dog", "Paris")
    # ... which a name at the very end never is: one object, so none
    assert C.complex_objects(toks("A/DET dog/NOUN near/ADP New/PROPN York/PROPN")) == (None, None)
    # more than two objects: none
    t = toks("a/DET cat/NOUN near/ADP a/DET dog/NOUN near/ADP a/DET cow/NOUN")
    assert C.complex_objects(t) == (None, None)


# ---- 3D_spatial_eval.py ------------------------------------------------------------------------------------------
def test_box_depth_indexes_x_as_rows():
    depth = np.arange(100, dtype=float).reshape(10, 10)
    # depth[1:3, 4:6] = rows 1-2, columns 4-5: (14 + 15 + 24 + 25) / 4
    assert C.box_depth(depth, [1, 4, 3, 6]) == pytest.approx(19.5)
    assert np.isnan(C.box_depth(depth, [3, 3, 3, 9]))


def test_depth_in_frame_truncates_to_eight_bits():
    # 1 x 2 depth -> min-max [0, 1] -> 3 pixels wide with align_corners: [0, 0.5, 1] -> x255 [0, 127.5, 255] -> 8-bit
    # truncation [0, 127, 255] -> same-size frame -> /255
    out = C.depth_in_frame(np.array([[2.0, 4.0]]), (3, 1), (3, 1))
    np.testing.assert_allclose(out, [[0, 127 / 255, 1]], rtol=1e-6)


def test_spatial_3d_score_matches_labels_by_substring():
    dets = np.array([[0, 0, 10, 10, 0.8, 0], [0, 0, 10, 10, 0.6, 0], [0, 0, 10, 10, 0.4, 1]])
    labels = ["black cat", "cat", "sofa"]
    # object 1 "cat": rows 0 then 1 (the last match before both are found), object 2 "sofa": row 2; IoU 1
    score = C.spatial_3d_score("in front of", "cat", "sofa", labels, dets, [0.1, 0.9, 0.5])
    assert score == pytest.approx(0.25 * 0.6 + 0.25 * 0.4 + 1 / 2)   # row 1's depth 0.9 > 0.5
    assert C.spatial_3d_score("in front of", "cat", "dog", labels, dets, [0.1, 0.9, 0.5]) == pytest.approx(0.2)
    assert C.spatial_3d_score("behind", "cat", "sofa", labels, dets, [0.1, 0.9, 0.5]) == pytest.approx(0.25)  # no cut


# ---- numeracy_eval.py --------------------------------------------------------------------------------------------
def test_numeracy_targets():
    t = lambda s: toks(" ".join(f"{w}/X" for w in s.split()))  # noqa: E731 - numeracy reads tokens only
    assert C.numeracy_targets(t("two cups and a bird")) == (["cup", "bird"], [2, 1])
    assert C.numeracy_targets(t("three fish")) == (["fish"], [3])  # fish is singular and plural
    assert C.numeracy_targets(t("a fish")) == (["fish"], [1])
    assert C.numeracy_targets(t("six people gathered")) == (["person"], [6])
    # 'a' before a plural: the object without a count (word2number has no value for 'a')
    assert C.numeracy_targets(t("a cups and two dogs")) == (["cup", "dog"], [2])
    assert C.numeracy_targets(t("Two dogs")) == ([], [])  # the number words are matched case-sensitively


def test_numeracy_score():
    box = lambda x: [x, 0, x + 10, 10]  # noqa: E731
    two_dogs = np.array([[*box(0), 0.9, 0], [*box(50), 0.8, 0]])
    assert C.numeracy_score(["dog"], [2], ["dog", "dog"], two_dogs) == 1.0
    assert C.numeracy_score(["dog"], [3], ["dog", "dog"], two_dogs) == 0.5
    # the second dog covers the first (IoU > 0.9): dropped as a duplicate
    dup = np.array([[*box(0), 0.9, 0], [*box(0.2), 0.8, 0]])
    assert C.numeracy_score(["dog"], [2], ["dog", "dog"], dup) == 0.5
    # two objects: weight 1/2 each; girl is counted as person; a label containing the name is taken over
    dets = np.array([[*box(0), 0.9, 0], [*box(50), 0.8, 1], [*box(100), 0.7, 1]])
    assert C.numeracy_score(["girl", "cat"], [1, 2], ["person", "black cat", "black cat"], dets) == 1.0
    assert C.numeracy_score(["girl", "cat"], [2, 2], ["person", "black cat", "black cat"], dets) == 0.75
    assert C.numeracy_score([], [], ["dog"], two_dogs[:1]) == 0.0


# ---- CLIP_similarity.py and 3_in_1.py ----------------------------------------------------------------------------
def test_clip_text_of_complex_prompts_drops_adjectives():
    t = toks("The/DET soft/ADJ pink/ADJ blanket/NOUN draped/VERB over/ADP the/DET chair/NOUN ./PUNCT")
    assert C.clip_complex_text(t) == "The blanket draped over the chair ."


def test_three_in_one():
    assert C.three_in_one("spatial", 0.4, 0.8, 0.1) == pytest.approx(0.6)
    assert C.three_in_one("action", 0.4, 0.8, 0.1) == pytest.approx(0.25)
    assert C.three_in_one("both", 0.4, 0.8, 0.3) == pytest.approx(0.5)


def test_complex_kinds_equal_the_official_raw_line_rule():
    """3_in_1.py reads the files with readlines() and keys each line by .strip('\\n').split('.')[0].lower()."""
    from importlib import resources

    def raw(path):
        with open(path, newline="") as f:
            return [x.strip("\n").split(".")[0].lower() for x in f.readlines()]

    data = resources.files("k3eval.metrics").joinpath("data", "t2i_compbench")
    spatial, action = raw(data / "complex_val_spatial.txt"), raw(data / "complex_val_action.txt")
    prompts = resources.files("k3eval.prompts").joinpath("data", "t2i_compbench", "complex_val.txt")
    official = ["spatial" if k in spatial else "action" if k in action else "both" for k in raw(prompts)]
    from k3eval.prompts.loaders import load_compbench

    mine = [C.complex_kind(p.text) for p in load_compbench() if p.category == "complex"]
    assert mine == official and (mine.count("spatial"), mine.count("both")) == (58, 30)
