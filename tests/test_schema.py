"""Tests of the 14-point schema: names, flip permutation, groups and skeleton."""

from facepoints_lib.core.schema import (FLIP_PERMUTATION, NUM_POINTS, OUTER_EYE_CORNERS, POINT_GROUPS,
                                   POINT_NAMES, SKELETON)


def _mirror_name(name: str) -> str:
    """The name a point gets in the mirrored image: left <-> right, inner/outer unchanged."""
    if name.startswith("left_"):
        return "right_" + name[len("left_"):]
    if name.startswith("right_"):
        return "left_" + name[len("right_"):]
    if name.endswith("_left"):
        return name[: -len("_left")] + "_right"
    if name.endswith("_right"):
        return name[: -len("_right")] + "_left"
    return name


def test_fourteen_distinct_names():
    assert NUM_POINTS == 14
    assert len(POINT_NAMES) == NUM_POINTS == len(set(POINT_NAMES))


def test_flip_permutation_is_an_involution():
    assert sorted(FLIP_PERMUTATION) == list(range(NUM_POINTS))
    assert [FLIP_PERMUTATION[FLIP_PERMUTATION[i]] for i in range(NUM_POINTS)] == list(range(NUM_POINTS))


def test_flip_permutation_maps_left_names_to_right_names():
    for i, j in enumerate(FLIP_PERMUTATION):
        assert POINT_NAMES[j] == _mirror_name(POINT_NAMES[i]), (i, POINT_NAMES[i], POINT_NAMES[j])
    # The midline points stay where they are, every side point moves.
    fixed = {POINT_NAMES[i] for i in range(NUM_POINTS) if FLIP_PERMUTATION[i] == i}
    assert fixed == {"nose_tip", "mouth_centre"}


def test_readme_order():
    # The order documented in README and gt.csv: eyebrows, eyes, nose, mouth.
    assert POINT_NAMES[0] == "left_eyebrow_outer" and POINT_NAMES[3] == "right_eyebrow_outer"
    assert POINT_NAMES[5] == "left_eye_centre" and POINT_NAMES[8] == "right_eye_centre"
    assert POINT_NAMES[10] == "nose_tip" and POINT_NAMES[12] == "mouth_centre"
    assert FLIP_PERMUTATION == (3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 10, 13, 12, 11)


def test_groups_partition_the_points_and_mirror_each_other():
    members = sorted(i for group in POINT_GROUPS.values() for i in group)
    assert members == list(range(NUM_POINTS))
    for name, group in POINT_GROUPS.items():
        assert all(POINT_NAMES[i].startswith(name) for i in group), name
        mirrored = sorted(FLIP_PERMUTATION[i] for i in group)
        assert mirrored == sorted(POINT_GROUPS[_mirror_name(name)]), name


def test_skeleton_and_eye_corners():
    assert all(0 <= a < NUM_POINTS and 0 <= b < NUM_POINTS and a != b for a, b in SKELETON)
    assert len(set(map(frozenset, SKELETON))) == len(SKELETON)
    # The skeleton is symmetric: mirroring every edge gives the same set of edges.
    edges = set(map(frozenset, SKELETON))
    assert {frozenset((FLIP_PERMUTATION[a], FLIP_PERMUTATION[b])) for a, b in SKELETON} == edges
    left, right = OUTER_EYE_CORNERS
    assert POINT_NAMES[left] == "left_eye_outer" and POINT_NAMES[right] == "right_eye_outer"
    assert FLIP_PERMUTATION[left] == right
