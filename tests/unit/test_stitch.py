"""Track stitching across segment boundaries: pure functions, no database."""

from __future__ import annotations

from worker.stitch import StitchedTrack, TrackSpan, boundary_links, stitch
from worker.tracking import Box, centre_distance, iou


def span(segment: int, local: int, first_ms: float, last_ms: float, first_box: Box,
         last_box: Box | None = None, frames: int = 5) -> TrackSpan:
    return TrackSpan(segment_index=segment, local_track=local, first_ms=first_ms, first_box=first_box,
                     last_ms=last_ms, last_box=last_box or first_box, frames=frames)


def test_a_person_crossing_two_boundaries_keeps_one_id() -> None:
    # given one face drifting right through three 10 s segments, sampled every 200 ms
    spans = [span(0, 0, 1000, 9800, (100, 100, 80, 80), (140, 100, 80, 80), frames=45),
             span(1, 0, 10000, 19800, (145, 102, 80, 80), (180, 100, 82, 82), frames=50),
             span(2, 0, 20000, 24000, (184, 101, 80, 80), frames=21)]
    # when stitched
    result = stitch(spans)
    # then all three spans share id 1 and the track covers the whole time
    assert set(result.global_ids.values()) == {1}
    assert result.tracks == [StitchedTrack(track_id=1, first_ms=1000, last_ms=24000, frames=116)]


def test_two_people_side_by_side_keep_their_own_ids() -> None:
    # given two faces far apart, whose local ids swap between segments (the tracker numbers by appearance)
    left, right = (50, 100, 80, 80), (400, 100, 80, 80)
    spans = [span(0, 0, 0, 9800, left), span(0, 1, 0, 9800, right),
             span(1, 0, 10000, 19800, right), span(1, 1, 10000, 19800, left)]
    # when stitched
    ids = stitch(spans).global_ids
    # then each person keeps one id, numbered by first appearance and then by x (left first)
    assert ids[(0, 0)] == ids[(1, 1)] == 1
    assert ids[(0, 1)] == ids[(1, 0)] == 2


def test_a_track_that_ends_long_before_the_boundary_is_not_merged() -> None:
    # given a face gone 5 s before the boundary and a face at the same place right after it
    spans = [span(0, 0, 0, 5000, (100, 100, 80, 80)), span(1, 0, 10000, 12000, (100, 100, 80, 80))]
    # when stitched
    result = stitch(spans)
    # then they are two people
    assert result.global_ids == {(0, 0): 1, (1, 0): 2}
    assert [track.frames for track in result.tracks] == [5, 5]


def test_a_track_starting_long_after_the_boundary_is_not_merged() -> None:
    # given a face right up to the boundary and one appearing at the same place 4 s later
    spans = [span(0, 0, 0, 9900, (100, 100, 80, 80)), span(1, 0, 14000, 16000, (100, 100, 80, 80))]
    # when stitched
    ids = stitch(spans).global_ids
    # then they are not joined
    assert ids[(0, 0)] != ids[(1, 0)]


def test_boxes_far_apart_are_not_merged() -> None:
    # given a face leaving at the left edge and another entering at the right edge at the boundary
    spans = [span(0, 0, 0, 9800, (10, 100, 80, 80)), span(1, 0, 10000, 12000, (500, 100, 80, 80))]
    # when stitched
    ids = stitch(spans).global_ids
    # then they stay apart
    assert ids == {(0, 0): 1, (1, 0): 2}


def test_a_moved_box_without_overlap_is_merged_by_centre_distance() -> None:
    # given a face that moved diagonally by 0.47 of its size across the boundary, too far to overlap by 0.3
    before, after = (100, 100, 100, 100), (133, 133, 100, 100)
    assert iou(before, after) < 0.3 and centre_distance(before, after) < 0.5
    spans = [span(0, 0, 0, 9800, before), span(1, 0, 10000, 12000, after)]
    # when stitched
    ids = stitch(spans).global_ids
    # then it is one person
    assert ids[(0, 0)] == ids[(1, 0)]


def test_links_are_one_to_one_best_match_first() -> None:
    # given one face ending at the boundary and two candidates starting after it: one exactly there, one nearby
    ending = [span(0, 0, 0, 9800, (100, 100, 80, 80))]
    starting = [span(1, 0, 10000, 12000, (120, 100, 80, 80)), span(1, 1, 10000, 12000, (101, 100, 80, 80))]
    # when linked
    links = boundary_links(ending, starting)
    # then only the better candidate is taken
    assert links == [((0, 0), (1, 1))]
    ids = stitch([*ending, *starting]).global_ids
    assert ids[(0, 0)] == ids[(1, 1)] != ids[(1, 0)]


def test_only_adjacent_segments_are_linked() -> None:
    # given a face in segment 0 and segment 2 only (segment 1 saw nobody), within the gap
    spans = [span(0, 0, 0, 9900, (100, 100, 80, 80)), span(2, 0, 10500, 12000, (100, 100, 80, 80))]
    # when stitched
    ids = stitch(spans).global_ids
    # then segment 2 does not follow segment 0 over the missing segment
    assert ids[(0, 0)] != ids[(2, 0)]


def test_ids_are_numbered_by_first_appearance_then_x() -> None:
    # given three people: one appearing late, two appearing together (the right one has the lower local id)
    spans = [span(0, 0, 0, 3000, (400, 50, 60, 60)), span(0, 1, 0, 3000, (100, 50, 60, 60)),
             span(0, 2, 6000, 9000, (250, 50, 60, 60))]
    # when stitched
    ids = stitch(spans).global_ids
    # then ids follow (first_ms, x)
    assert ids == {(0, 1): 1, (0, 0): 2, (0, 2): 3}


def test_no_spans_give_no_tracks() -> None:
    # given a job where nobody was seen / when stitched / then there is nothing
    result = stitch([])
    assert result.global_ids == {} and result.tracks == []
