"""A job's results read back: timeline pages, CSV lines, per-track summaries and a plot, all from SQL."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, not_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fervid.db import session_scope
from fervid.labels import EMOTION_COLOURS, EMOTIONS
from fervid.lifecycle import ACTIVE_JOB_STATUSES
from fervid.quality import face_quality, reliable_face
from fervid.sampling import PlannedFrame
from fervid.tables import EMOTION_COLUMNS, Face, Frame, Job, ResultCache, Segment
from fervid.utc import utc_now

MAX_PLOT_TRACKS = 8
MAX_PLOT_POINTS = 500  # per track: about one per pixel column of the plot
MAX_PAGE_FACES = 2000  # per timeline page (and CSV batch), whatever its number of frames
CSV_HEADER = ("frame_index", "timestamp_ms", "track_id", "x", "y", "w", "h", "score", *EMOTIONS, "dominant",
              "size_px", "sharpness", "yaw_deg", "roll_deg", "top_probability", "margin", "reliable")
CSV_BATCH_FRAMES = 1000


def dominant(probabilities: Mapping[str, float]) -> str:
    """The argmax label; a tie goes to the label earlier in FER order."""
    return max(EMOTIONS, key=lambda label: probabilities[label])


def _face_dict(face: Face) -> dict[str, Any]:
    emotions = {label: float(getattr(face, label)) for label in EMOTIONS}
    quality = face_quality((face.x, face.y, face.w, face.h), emotions, face.sharpness, face.yaw, face.roll)
    return {"track_id": face.track_id, "box": {"x": face.x, "y": face.y, "w": face.w, "h": face.h},
            "score": face.score, "emotions": emotions, "dominant": dominant(emotions), "quality": quality.to_dict()}


def timeline_page(session: Session, job_id: str, *, limit: int = 100, max_faces: int = MAX_PAGE_FACES,
                  after_frame: int | None = None, from_ms: float | None = None, to_ms: float | None = None,
                  track_id: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """One page of sampled frames in time order, each with its faces; returns (items, frame_index to continue
    after, or None on the last page).

    A page holds at most `limit` frames and, frames being whole, at most `max_faces` faces (a first frame with
    more comes alone). Every frame appears, with or without faces; with `track_id`, only the frames where that
    track appears, with just that face. `from_ms`/`to_ms` bound timestamp_ms inclusively. Two queries: frames
    with their face counts, then the faces.
    """
    window: list[ColumnElement[bool]] = []
    if from_ms is not None:
        window.append(Frame.timestamp_ms >= from_ms)
    if to_ms is not None:
        window.append(Frame.timestamp_ms <= to_ms)
    of_frame = [Face.job_id == Frame.job_id, Face.frame_index == Frame.frame_index,
                *([Face.track_id == track_id] if track_id is not None else [])]
    face_count = select(func.count()).where(*of_frame).correlate(Frame).scalar_subquery()
    frames_query = select(Frame.frame_index, Frame.timestamp_ms, face_count.label("faces")).where(
        Frame.job_id == job_id, *window)
    if after_frame is not None:
        frames_query = frames_query.where(Frame.frame_index > after_frame)
    if track_id is not None:
        frames_query = frames_query.where(exists().where(*of_frame))
    rows = session.execute(frames_query.order_by(Frame.frame_index).limit(limit + 1)).all()
    kept = faces = 0
    for row in rows[:limit]:
        if kept and faces + row.faces > max_faces:
            break
        kept, faces = kept + 1, faces + row.faces
    frames = rows[:kept]
    if not frames:
        return [], None
    faces_query = select(Face).where(
        Face.job_id == job_id, Face.frame_index.between(frames[0].frame_index, frames[-1].frame_index))
    if track_id is not None:
        faces_query = faces_query.where(Face.track_id == track_id)
    if window:  # only the listed frames' faces, whatever the order of timestamps
        faces_query = faces_query.join(Frame, and_(Frame.job_id == Face.job_id,
                                                   Frame.frame_index == Face.frame_index)).where(*window)
    faces_by_frame: dict[int, list[dict[str, Any]]] = {}
    for face in session.scalars(faces_query.order_by(Face.frame_index, Face.face_index)):
        faces_by_frame.setdefault(face.frame_index, []).append(_face_dict(face))
    items = [{"frame_index": row.frame_index, "timestamp_ms": row.timestamp_ms,
              "faces": faces_by_frame.get(row.frame_index, [])} for row in frames]
    return items, (frames[-1].frame_index if len(rows) > kept else None)


def iter_timeline(session: Session, job_id: str, batch: int = CSV_BATCH_FRAMES) -> Iterator[dict[str, Any]]:
    """Every timeline item of the job, read in keyset batches so memory stays flat."""
    after: int | None = None
    while True:
        items, after = timeline_page(session, job_id, limit=batch, after_frame=after)
        yield from items
        if after is None:
            return


def full_timeline(session: Session, job_id: str) -> list[dict[str, Any]]:
    return list(iter_timeline(session, job_id))


def _csv_row(item: Mapping[str, Any], face: Mapping[str, Any] | None) -> list[Any]:
    head = [item["frame_index"], _number(item["timestamp_ms"])]
    if face is None:
        return head + [""] * (len(CSV_HEADER) - len(head))
    box, emotions, quality = face["box"], face["emotions"], face["quality"]
    return [*head, face["track_id"], box["x"], box["y"], box["w"], box["h"], f"{face['score']:.4f}",
            *(f"{emotions[label]:.6f}" for label in EMOTIONS), face["dominant"], quality["size_px"],
            *("" if quality[name] is None else quality[name] for name in ("sharpness", "yaw_deg", "roll_deg")),
            f"{quality['top_probability']:.4f}", f"{quality['margin']:.4f}", int(quality["reliable"])]


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def timeline_csv_lines(job_id: str, batch: int = CSV_BATCH_FRAMES) -> Iterator[str]:
    """The CSV export, header first, one chunk per batch of frames: one row per face, one row with empty face
    fields for a frame without faces.

    Each batch is read in a session of its own, closed before its chunk is yielded, so a slow reader holds no
    pooled connection between batches. Keyset batches never repeat or skip a frame, and a finished job's rows do
    not change, so its export is whole and consistent; a running job's shows what each batch found.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    after: int | None = None
    while True:
        with session_scope() as session:
            items, after = timeline_page(session, job_id, limit=batch, after_frame=after)
        for item in items:
            for face in item["faces"] or [None]:
                writer.writerow(_csv_row(item, face))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if after is None:
            return


def _emotion_means(row: Any) -> dict[str, float]:
    return {label: float(getattr(row, label) or 0.0) for label in EMOTIONS}


def _means_query(job_id: str, *faces: ColumnElement[bool]) -> Select[Any]:
    return select(*(func.avg(column).label(column.key) for column in EMOTION_COLUMNS)).where(Face.job_id == job_id,
                                                                                              *faces)


def _dominant_column() -> ColumnElement[str]:
    """`dominant` in SQL: CASE takes the first label whose probability ties or beats every other, so a tie goes to
    the earlier label as in Python."""
    return case(*((and_(*(column >= other for other in EMOTION_COLUMNS if other is not column)), label)
                  for column, label in zip(EMOTION_COLUMNS, EMOTIONS, strict=True)), else_=EMOTIONS[-1])


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {label: counts.get(label, 0) / total for label in EMOTIONS}


def summary(session: Session, job_id: str, *, reliable_only: bool = True) -> dict[str, Any]:
    """Per-track and overall mean emotions, and the share of faces each emotion dominates, with SQL aggregates, over
    the reliable faces (fervid.quality) unless `reliable_only` is False; each track and the whole say how many faces
    were left out. A job without faces counted has no tracks and an overall of nulls."""
    counted = [reliable_face()] if reliable_only else []
    left_out: dict[int, int] = {}
    if reliable_only:
        left_out = {track_id: count for track_id, count in session.execute(
            select(Face.track_id, func.count()).where(Face.job_id == job_id, not_(reliable_face()))
            .group_by(Face.track_id))}
    overall_left_out = sum(left_out.values())
    per_track = session.execute(
        _means_query(job_id, *counted)
        .add_columns(Face.track_id, func.min(Frame.timestamp_ms).label("first_ms"),
                     func.max(Frame.timestamp_ms).label("last_ms"),
                     func.count(func.distinct(Face.frame_index)).label("frames"))
        .join(Frame, and_(Frame.job_id == Face.job_id, Frame.frame_index == Face.frame_index))
        .group_by(Face.track_id)
        .order_by(Face.track_id)
    ).all()
    if not per_track:
        return {"tracks": [], "overall": {"mean_emotions": None, "dominant": None, "dominant_share": None,
                                          "faces_left_out": overall_left_out}}
    dominant_column = _dominant_column().label("dominant")
    counts: dict[int, dict[str, int]] = {}
    overall_counts: dict[str, int] = {}
    for track_id, label, count in session.execute(
        select(Face.track_id, dominant_column, func.count()).where(Face.job_id == job_id, *counted)
        .group_by(Face.track_id, dominant_column)
    ):
        counts.setdefault(track_id, {})[label] = count
        overall_counts[label] = overall_counts.get(label, 0) + count
    tracks = []
    for row in per_track:
        means = _emotion_means(row)
        tracks.append({"track_id": row.track_id, "first_ms": row.first_ms, "last_ms": row.last_ms,
                       "frames": row.frames, "mean_emotions": means, "dominant": dominant(means),
                       "dominant_share": _shares(counts[row.track_id]),
                       "faces_left_out": left_out.get(row.track_id, 0)})
    overall = _emotion_means(session.execute(_means_query(job_id, *counted)).one())
    return {"tracks": tracks, "overall": {"mean_emotions": overall, "dominant": dominant(overall),
                                          "dominant_share": _shares(overall_counts),
                                          "faces_left_out": overall_left_out}}


@dataclass(frozen=True)
class TrackSeries:
    """One track's emotion probabilities over time, for plotting."""

    track_id: int
    timestamps_ms: list[float]
    probabilities: dict[str, list[float]]  # label -> one value per timestamp


def plot_series(session: Session, job_id: str, sample_interval_ms: float, max_tracks: int = MAX_PLOT_TRACKS,
                max_points: int = MAX_PLOT_POINTS) -> tuple[list[TrackSeries], float]:
    """The `max_tracks` tracks seen on the most frames (by track id), each with its probabilities over time, and
    the time between their points; reliable faces only (fervid.quality).

    A job longer than `max_points` sampling intervals is averaged in SQL over time buckets of a whole number of
    intervals, each point at its bucket's centre, so a track has at most `max_points` points however long the
    video; a shorter one gives every sample (that spacing is then `sample_interval_ms`).
    """
    top_tracks = session.scalars(
        select(Face.track_id).where(Face.job_id == job_id, reliable_face()).group_by(Face.track_id)
        .order_by(func.count().desc(), Face.track_id).limit(max_tracks)
    ).all()
    if not top_tracks:
        return [], sample_interval_ms
    first_ms, last_ms = session.execute(select(func.min(Frame.timestamp_ms), func.max(Frame.timestamp_ms))
                                        .where(Frame.job_id == job_id)).one()
    # At most max_points buckets: floor(span / bucket) <= max_points - 1.
    per_bucket = math.ceil((last_ms - first_ms) / (max(max_points - 1, 1) * sample_interval_ms))
    of_face = and_(Frame.job_id == Face.job_id, Frame.frame_index == Face.frame_index)
    mine = and_(Face.job_id == job_id, Face.track_id.in_(top_tracks), reliable_face())
    series: dict[int, TrackSeries] = {}

    def add(track_id: int, timestamp_ms: float, row: Any) -> None:
        track = series.get(track_id)
        if track is None:
            track = series[track_id] = TrackSeries(track_id, [], {label: [] for label in EMOTIONS})
        track.timestamps_ms.append(timestamp_ms)
        for label in EMOTIONS:
            track.probabilities[label].append(float(getattr(row, label)))

    if per_bucket <= 1:
        for row in session.execute(select(Face.track_id, Frame.timestamp_ms, *EMOTION_COLUMNS).join(Frame, of_face)
                                   .where(mine).order_by(Face.track_id, Face.frame_index, Face.face_index)):
            add(row.track_id, row.timestamp_ms, row)
        return [series[track_id] for track_id in sorted(series)], sample_interval_ms
    bucket_ms = per_bucket * sample_interval_ms
    # The bucket as a column of a subquery: PostgreSQL groups by it only as the very same expression, which the
    # select list's own bound parameters would not be.
    bucketed = select(Face.track_id, *EMOTION_COLUMNS,
                      func.floor((Frame.timestamp_ms - first_ms) / bucket_ms).label("bucket")
                      ).join(Frame, of_face).where(mine).subquery()
    means = (func.avg(bucketed.c[column.key]).label(column.key) for column in EMOTION_COLUMNS)
    for row in session.execute(select(bucketed.c.track_id, bucketed.c.bucket, *means)
                               .group_by(bucketed.c.track_id, bucketed.c.bucket)
                               .order_by(bucketed.c.track_id, bucketed.c.bucket)):
        add(row.track_id, first_ms + (float(row.bucket) + 0.5) * bucket_ms, row)
    return [series[track_id] for track_id in sorted(series)], bucket_ms


def plot_png(session: Session, job: Job) -> bytes:
    """The job's plot.png, from its current rows."""
    series, interval_ms = plot_series(session, job.id, 1000.0 / job.sample_fps)
    title = f"{job.filename or job.id} ({job.status}, {job.sample_fps:g} fps sampled)"
    return render_plot_png(series, title, interval_ms)


def computed_results(session: Session, job: Job) -> ResultCache:
    """The job's summary and plot computed from its rows now, as a cache row (not added to the session)."""
    return ResultCache(job_id=job.id, summary=summary(session, job.id), plot_png=plot_png(session, job),
                       computed_at=utc_now())


def finished_results(session: Session, job: Job) -> ResultCache:
    """A finished job's summary and plot from its cache, which the first read after the job finished computes and
    stores (finished jobs do not change)."""
    cached = session.get(ResultCache, job.id)
    if cached is not None:
        return cached
    computed = computed_results(session, job)
    try:
        with session.begin_nested():
            session.add(computed)
    except IntegrityError:  # another request stored it first, or the job was deleted meanwhile
        return session.get(ResultCache, job.id) or computed
    return computed


def job_summary(session: Session, job: Job, *, reliable_only: bool = True) -> dict[str, Any]:
    """The summary the API serves: cached once the job has finished (over its reliable faces), computed from the
    rows while it runs or when every face is asked for."""
    if job.status in ACTIVE_JOB_STATUSES or not reliable_only:
        return summary(session, job.id, reliable_only=reliable_only)
    return finished_results(session, job).summary


def job_plot_png(session: Session, job: Job) -> bytes:
    """The plot the API serves: cached once the job has finished, drawn from the rows while it runs."""
    if job.status in ACTIVE_JOB_STATUSES:
        return plot_png(session, job)
    return finished_results(session, job).plot_png


# A track is absent between two of its samples further apart than this many sampling intervals (the plot, annotated
# videos, and the viewer's own GAP_INTERVALS in api/static/viewer-data.js).
GAP_INTERVALS = 1.5


def track_runs(timestamps_ms: Sequence[float], sample_interval_ms: float) -> list[slice]:
    """The stretches of a track's samples without a gap: a gap is more than GAP_INTERVALS sampling intervals
    between two."""
    runs, start = [], 0
    for position in range(1, len(timestamps_ms) + 1):
        if position == len(timestamps_ms) or timestamps_ms[position] - timestamps_ms[position - 1] > \
                GAP_INTERVALS * sample_interval_ms:
            runs.append(slice(start, position))
            start = position
    return runs


def render_plot_png(series: Sequence[TrackSeries], title: str, sample_interval_ms: float) -> bytes:
    """A PNG read top down: a swimlane of each track's dominant emotion over time (who showed what, when), then
    per track a stacked area of the 7 probabilities, blank where the track is absent. Colours: EMOTION_COLOURS.
    Uses matplotlib's object API (no pyplot global state), so it is safe to call from a worker thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = max(1, len(series))
    lane_height = 0.5 + 0.3 * rows
    figure = Figure(figsize=(10, lane_height + 2.2 * rows + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    lane, *areas = figure.subplots(rows + 1, 1, squeeze=False, sharex=True,
                                   height_ratios=[lane_height] + [2.2] * rows)[:, 0]
    figure.suptitle(title)
    colours = [EMOTION_COLOURS[label] for label in EMOTIONS]
    figure.legend(handles=[Patch(color=colour, label=label) for label, colour in zip(EMOTIONS, colours, strict=True)],
                  loc="outside lower center", ncols=len(EMOTIONS), fontsize=8, frameon=False)
    lane.set_title("dominant emotion per track", fontsize=10)
    lane.set_yticks(range(len(series)), [f"track {track.track_id}" for track in series], fontsize=8)
    lane.set_ylim(max(1, len(series)) - 0.5, -0.5)
    lane.tick_params(axis="x", labelbottom=True)
    half = sample_interval_ms / 2000.0
    for row, track in enumerate(series):
        # One collection per emotion, not one per sample: thousands of artists take matplotlib seconds to lay out.
        bars: dict[str, list[tuple[float, float]]] = {}
        for position, ms in enumerate(track.timestamps_ms):
            label = dominant({name: values[position] for name, values in track.probabilities.items()})
            bars.setdefault(label, []).append((ms / 1000.0 - half, 2 * half))
        for label, ranges in bars.items():
            lane.broken_barh(ranges, (row - 0.4, 0.8), color=EMOTION_COLOURS[label])
    if not series:
        areas[0].text(0.5, 0.5, "no faces found", ha="center", va="center", transform=areas[0].transAxes)
        areas[0].set_axis_off()
        lane.set_axis_off()
    for ax, track in zip(areas, series, strict=False):
        for run in track_runs(track.timestamps_ms, sample_interval_ms):
            seconds = [ms / 1000.0 for ms in track.timestamps_ms[run]]
            stacked = [track.probabilities[label][run] for label in EMOTIONS]
            if len(seconds) == 1:  # a sample alone: as wide as the interval it stands for
                seconds = [seconds[0] - half, seconds[0] + half]
                stacked = [values + values for values in stacked]
            ax.stackplot(seconds, stacked, colors=colours, linewidth=0)
        means = {label: sum(values) / len(values) for label, values in track.probabilities.items()}
        ax.set_title(f"track {track.track_id}: mostly {dominant(means)}", fontsize=10)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
    areas[-1].set_xlabel("time (s)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def planned_frame(session: Session, job_id: str, frame_index: int) -> PlannedFrame | None:
    """An analysed frame's place in the media (pts, keyframe), from the plan of the one segment that sampled it; None
    if it was not sampled, or is not analysed yet."""
    plan = session.scalar(select(Segment.plan).join(Frame, and_(Frame.job_id == Segment.job_id,
                                                                Frame.segment_index == Segment.index))
                          .where(Frame.job_id == job_id, Frame.frame_index == frame_index))
    return next((planned for planned in plan or () if planned.frame_index == frame_index), None)
