"""Results through the API: timeline pages and filters, the CSV export, the summary and the plot, read from rows
inserted the way the worker writes them (no worker runs here)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from fervid.labels import EMOTIONS
from tests.integration.test_api import ALICE, Api, assert_error, insert_results, running_api, submit_uri

pytestmark = pytest.mark.integration


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        yield running


def new_job(api: Api) -> str:
    return str(submit_uri(api).json()["job_id"])


def walk_timeline(api: Api, job_id: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item over all pages, and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        response = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE,
                                  params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["job_id"] == job_id
        items += body["items"]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            return items, pages


def two_people(k: int) -> list[int]:
    """Track 1 for the first 100 frames, both from 100 to 199, track 2 after; nobody on every tenth frame + 3."""
    if k % 10 == 3:
        return []
    return [1] if k < 100 else [1, 2] if k < 200 else [2]


class StatementCounter:
    """Counts the SQL statements the engine executes, to prove pages cost a fixed number of queries."""

    def __init__(self) -> None:
        from fervid.db import get_engine

        self.engine, self.count = get_engine(), 0

    def _count(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


def test_walking_the_timeline_pages_gives_every_frame_once_in_order(api: Api) -> None:
    # given 250 sampled frames, some without faces, some with two
    job_id = new_job(api)
    expected = insert_results(job_id, frames=250, tracks_at=two_people)
    # when all pages are walked 7 frames at a time
    items, pages = walk_timeline(api, job_id, limit=7)
    # then each frame appears exactly once, in time order, with exactly its faces, and no page is wasted
    assert items == expected
    assert pages == math.ceil(250 / 7)
    assert [item["frame_index"] for item in items] == sorted({item["frame_index"] for item in items})
    # and the default page is 100 frames
    first = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE).json()
    assert len(first["items"]) == 100 and first["next_cursor"]


def test_a_page_costs_two_queries_however_many_faces_it_holds(api: Api) -> None:
    # given a page of 150 frames holding 200 faces
    from fervid.db import session_scope
    from fervid.results import timeline_page

    job_id = new_job(api)
    insert_results(job_id, frames=150, tracks_at=lambda k: [1, 2] if k % 3 == 0 else [1])
    # when it is read
    with session_scope() as session, StatementCounter() as statements:
        items, _ = timeline_page(session, job_id, limit=150)
    # then frames and faces each took one query
    assert sum(len(item["faces"]) for item in items) == 200
    assert statements.count == 2


def test_time_and_track_filters(api: Api) -> None:
    # given the two-people timeline (frames every 200 ms)
    job_id = new_job(api)
    expected = insert_results(job_id, frames=250, tracks_at=two_people)
    # when it is read between 10 s and 30 s, and for track 2 only (paged 9 at a time)
    window, _ = walk_timeline(api, job_id, from_ms=10_000, to_ms=30_000, limit=1000)
    track_two, _ = walk_timeline(api, job_id, track_id=2, limit=9)
    both, _ = walk_timeline(api, job_id, track_id=1, from_ms=19_000, limit=4)
    # then the window is inclusive at both ends
    assert window == [item for item in expected if 10_000 <= item["timestamp_ms"] <= 30_000]
    assert window[0]["timestamp_ms"] == 10_000 and window[-1]["timestamp_ms"] == 30_000
    # and a track filter keeps only the frames where the track appears, with just its face
    assert track_two == [{**item, "faces": [face for face in item["faces"] if face["track_id"] == 2]}
                         for item in expected if any(face["track_id"] == 2 for face in item["faces"])]
    assert {face["track_id"] for item in track_two for face in item["faces"]} == {2}
    assert [item["frame_index"] for item in both] == [item["frame_index"] for item in expected
                                                      if item["timestamp_ms"] >= 19_000 and 1 in
                                                      [face["track_id"] for face in item["faces"]]]
    # and an unknown track is an empty page, not an error
    assert walk_timeline(api, job_id, track_id=99) == ([], 1)


def test_a_job_without_results_has_an_empty_timeline_and_bad_cursors_are_refused(api: Api) -> None:
    # given a queued job with nothing written yet
    job_id = new_job(api)
    # when / then
    assert walk_timeline(api, job_id) == ([], 1)
    bad = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"cursor": "bm9wZQ"})
    assert_error(bad, 422, "invalid_request")


def read_csv(response: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.text)))


def test_the_csv_has_one_row_per_face_and_one_per_empty_frame(api: Api) -> None:
    # given 1205 frames (more than one batch of the streamed export)
    job_id = new_job(api)
    expected = insert_results(job_id, frames=1205, tracks_at=lambda k: two_people(k % 300))
    # when it is exported
    response = api.client.get(f"/v1/jobs/{job_id}/timeline.csv", headers=ALICE)
    # then it is CSV with the documented header and the rows in time order
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines()[0] == ("frame_index,timestamp_ms,track_id,x,y,w,h,score,angry,disgust,fear,"
                                             "happy,sad,surprise,neutral,dominant,size_px,sharpness,yaw_deg,"
                                             "roll_deg,top_probability,margin,reliable")
    rows = read_csv(response)
    assert len(rows) == sum(max(1, len(item["faces"])) for item in expected)
    flattened = [(item, face) for item in expected for face in (item["faces"] or [None])]
    for row, (item, face) in zip(rows, flattened, strict=True):
        assert int(row["frame_index"]) == item["frame_index"]
        assert float(row["timestamp_ms"]) == item["timestamp_ms"]
        if face is None:
            assert all(row[column] == "" for column in ("track_id", "x", "score", *EMOTIONS, "dominant"))
            continue
        assert int(row["track_id"]) == face["track_id"] and int(row["w"]) == face["box"]["w"]
        assert all(abs(float(row[label]) - face["emotions"][label]) < 1e-6 for label in EMOTIONS)
        assert row["dominant"] == face["dominant"]
        quality = face["quality"]
        assert int(row["size_px"]) == quality["size_px"] and float(row["yaw_deg"]) == quality["yaw_deg"]
        assert float(row["sharpness"]) == quality["sharpness"] and float(row["roll_deg"]) == quality["roll_deg"]
        assert abs(float(row["margin"]) - quality["margin"]) < 1e-4 and row["reliable"] == str(int(quality["reliable"]))


def test_the_summary_averages_each_track_and_the_whole_job(api: Api) -> None:
    # given the two-people timeline
    from fervid.db import session_scope
    from fervid.results import summary

    job_id = new_job(api)
    expected = insert_results(job_id, frames=250, tracks_at=two_people)
    every_face = [(item, face) for item in expected for face in item["faces"]]
    reliable = [(item, face) for item, face in every_face if face["quality"]["reliable"]]
    assert 0 < len(reliable) < len(every_face)
    # when it is summarised: by default over the reliable faces, and over every face when asked
    for faces, all_faces in (("reliable", reliable), ("all", every_face)):
        response = api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE, params={"faces": faces})
        assert response.status_code == 200, response.text
        check_summary(response.json(), all_faces, every_face if faces == "reliable" else all_faces)
    assert api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE).json() == \
        api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE, params={"faces": "reliable"}).json()
    # and it is computed by SQL aggregates: a fixed number of queries, whatever the number of faces
    with session_scope() as session, StatementCounter() as statements:
        summary(session, job_id)
    assert statements.count == 4


def check_summary(body: dict[str, Any], all_faces: list[tuple[dict[str, Any], dict[str, Any]]],
                  every_face: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Each track's span, frame count and means match the counted faces, overall averages them, and what was left
    out of `every_face` is counted."""
    assert [track["track_id"] for track in body["tracks"]] == [1, 2]
    for track in body["tracks"]:
        mine = [(item, face) for item, face in all_faces if face["track_id"] == track["track_id"]]
        assert track["frames"] == len(mine)
        of_track = sum(face["track_id"] == track["track_id"] for _, face in every_face)
        assert track["faces_left_out"] == of_track - len(mine)
        assert (track["first_ms"], track["last_ms"]) == (mine[0][0]["timestamp_ms"], mine[-1][0]["timestamp_ms"])
        means = {label: sum(face["emotions"][label] for _, face in mine) / len(mine) for label in EMOTIONS}
        assert track["mean_emotions"] == pytest.approx(means, abs=1e-9)
        assert list(track["mean_emotions"]) == list(EMOTIONS)
        assert track["dominant"] == max(means, key=lambda label: means[label])
        assert track["dominant_share"] == pytest.approx(dominant_shares([face for _, face in mine]), abs=1e-12)
    overall = {label: sum(face["emotions"][label] for _, face in all_faces) / len(all_faces) for label in EMOTIONS}
    assert body["overall"]["mean_emotions"] == pytest.approx(overall, abs=1e-9)
    assert body["overall"]["dominant_share"] == pytest.approx(dominant_shares([f for _, f in all_faces]), abs=1e-12)
    assert body["overall"]["faces_left_out"] == len(every_face) - len(all_faces)


def dominant_shares(faces: list[dict[str, Any]]) -> dict[str, float]:
    return {label: sum(face["dominant"] == label for face in faces) / len(faces) for label in EMOTIONS}


def test_the_dominant_share_breaks_ties_as_the_timeline_does(api: Api) -> None:
    # given faces whose highest probabilities tie (the earlier FER label wins in the timeline)
    from sqlalchemy import insert

    from fervid.db import session_scope
    from fervid.results import summary
    from fervid.tables import Face, Frame

    job_id = new_job(api)
    ties = [("angry", "happy"), ("happy", "neutral"), ("disgust", "fear"), ("sad", "surprise"), ("neutral",)]
    with session_scope() as session:
        session.execute(insert(Frame), [{"job_id": job_id, "frame_index": i, "timestamp_ms": 40.0 * i,
                                         "segment_index": 0} for i in range(len(ties))])
        session.execute(insert(Face), [
            {"job_id": job_id, "frame_index": i, "face_index": 0, "segment_index": 0, "local_track": 1, "track_id": 1,
             "x": 0, "y": 0, "w": 50, "h": 50, "score": 0.9,
             **{label: (0.3 if label in tied else 0.4 / (len(EMOTIONS) - len(tied))) for label in EMOTIONS}}
            for i, tied in enumerate(ties)])
    # when it is summarised
    with session_scope() as session:
        track = summary(session, job_id)["tracks"][0]
    # then each face counts once, for the label the timeline calls dominant
    timeline = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE).json()["items"]
    assert [item["faces"][0]["dominant"] for item in timeline] == ["angry", "happy", "disgust", "sad", "neutral"]
    assert track["dominant_share"] == pytest.approx(dominant_shares([item["faces"][0] for item in timeline]))


def test_a_job_without_faces_has_an_empty_summary(api: Api) -> None:
    # given frames but no faces
    job_id = new_job(api)
    insert_results(job_id, frames=10, tracks_at=lambda k: [])
    # when / then
    body = api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE).json()
    assert body == {"tracks": [], "overall": {"mean_emotions": None, "dominant": None, "dominant_share": None,
                                              "faces_left_out": 0}}


def png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")


def test_the_plot_is_a_png_with_one_panel_per_track_up_to_eight(api: Api) -> None:
    # given jobs with one, eight and ten tracks, and one without faces
    jobs = {tracks: new_job(api) for tracks in (0, 1, 8, 10)}
    for tracks, job_id in jobs.items():
        insert_results(job_id, frames=30, tracks_at=lambda k, n=tracks: list(range(1, n + 1)))
    # when each is plotted
    responses = {tracks: api.client.get(f"/v1/jobs/{job_id}/plot.png", headers=ALICE)
                 for tracks, job_id in jobs.items()}
    # then each is a PNG whose height grows with the panels, capped at eight
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in responses.values())
    sizes = {tracks: png_size(response.content) for tracks, response in responses.items()}
    assert sizes[0][1] == sizes[1][1] < sizes[8][1] == sizes[10][1]
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(responses[1].content), format="png")
    assert pixels.shape[:2] == sizes[1][::-1] and pixels.std() > 0.01  # drawn, not a blank canvas
