from __future__ import annotations

from worker.tracking import FaceTracker, greedy_pairs, iou


def test_iou_of_identical_disjoint_and_half_overlapping_boxes() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 10, 10)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 10, 10)) - 50 / 150) < 1e-9


def test_two_people_keep_their_ids_while_moving() -> None:
    # given two faces walking right, side by side
    tracker = FaceTracker()
    ids = []
    # when they are seen in 10 frames, 200 ms apart
    for step in range(10):
        ids.append(tracker.update(step * 200.0, [(10 + 8 * step, 50, 60, 60), (300 + 8 * step, 40, 70, 70)]))
    # then each keeps the id it got first
    assert all(frame == [0, 1] for frame in ids)


def test_order_of_detections_does_not_swap_ids() -> None:
    tracker = FaceTracker()
    first = tracker.update(0.0, [(0, 0, 50, 50), (200, 0, 50, 50)])
    second = tracker.update(200.0, [(202, 0, 50, 50), (2, 0, 50, 50)])
    assert first == [0, 1]
    assert second == [1, 0]


def test_short_miss_is_tolerated_and_long_absence_starts_a_new_track() -> None:
    tracker = FaceTracker(max_gap_ms=1000.0)
    assert tracker.update(0.0, [(100, 100, 80, 80)]) == [0]
    assert tracker.update(200.0, []) == []  # the detector missed the face once
    assert tracker.update(400.0, [(104, 100, 80, 80)]) == [0]
    assert tracker.update(3000.0, [(104, 100, 80, 80)]) == [1]  # gone too long: a new person as far as we know


def test_fast_motion_at_low_sample_rate_matches_by_centre_distance() -> None:
    tracker = FaceTracker()
    tracker.update(0.0, [(100, 100, 60, 60)])
    # no overlap with the previous box, but a close centre and the same size
    assert tracker.update(1000.0, [(130, 100, 60, 60)]) == [0]


def test_a_far_face_of_a_different_size_is_a_new_track() -> None:
    tracker = FaceTracker()
    tracker.update(0.0, [(100, 100, 60, 60)])
    assert tracker.update(200.0, [(500, 300, 200, 200)]) == [1]


def test_greedy_pairs_is_one_to_one_best_first() -> None:
    assert sorted(greedy_pairs([(0.9, 0, 0), (0.8, 0, 1), (0.7, 1, 0), (0.1, 1, 1)])) == [(0, 0), (1, 1)]
    assert greedy_pairs([(0.0, 0, 0)]) == []
