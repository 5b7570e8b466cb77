// The viewer page's data helpers on their own: run by tests/unit/test_viewer_data.py (`node --test`).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  containRect, formatTime, frameAt, nearestSampleIndex, overallStats, scaleBox, smoothSamples, splitRuns,
  stackedPaths, stackLayers, stepSampleIndex, tracksOf, trackStats,
} from "../../api/static/viewer-data.js";

const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];

function emotions(happy) {
  const rest = (1 - happy) / 6;
  return Object.fromEntries(EMOTIONS.map((label) => [label, label === "happy" ? happy : rest]));
}

function face(trackId, happy, x = 10) {
  return { track_id: trackId, box: { x, y: 20, w: 30, h: 40 }, score: 0.9, emotions: emotions(happy),
           dominant: happy > 0.2 ? "happy" : "angry" };
}

test("the nearest sample is found on either side, the earlier on a tie", () => {
  const times = [0, 200, 400, 600];
  assert.equal(nearestSampleIndex(times, -50), 0);
  assert.equal(nearestSampleIndex(times, 299), 1);
  assert.equal(nearestSampleIndex(times, 300), 1);
  assert.equal(nearestSampleIndex(times, 301), 2);
  assert.equal(nearestSampleIndex(times, 10_000), 3);
  assert.equal(nearestSampleIndex([], 5), -1);
});

test("a frame shows only within half a sampling interval of its sample", () => {
  const frames = [{ timestamp_ms: 0, faces: [] }, { timestamp_ms: 200, faces: [face(1, 0.5)] }];
  assert.equal(frameAt(frames, 290, 200).timestamp_ms, 200);
  assert.equal(frameAt(frames, 302, 200), null); // past the last sample by more than half an interval (+1 ms)
  assert.equal(frameAt([], 0, 200), null);
});

test("stepping moves to the neighbouring sample and stops at the ends", () => {
  const times = [0, 200, 400];
  assert.equal(stepSampleIndex(times, 200, +1), 2);
  assert.equal(stepSampleIndex(times, 200, -1), 0);
  assert.equal(stepSampleIndex(times, 250, -1), 1);
  assert.equal(stepSampleIndex(times, 250, +1), 2);
  assert.equal(stepSampleIndex(times, 400, +1), 2);
  assert.equal(stepSampleIndex(times, 0, -1), 0);
});

test("tracks are gathered in id order and split at gaps over 1.5 intervals", () => {
  const frames = [0, 200, 400, 1000, 1200].map((t) => ({ timestamp_ms: t, faces: [face(2, 0.5), face(1, 0.1)] }));
  const tracks = tracksOf(frames);
  assert.deepEqual([...tracks.keys()], [1, 2]);
  assert.deepEqual(tracks.get(1).map((s) => s.t), [0, 200, 400, 1000, 1200]);
  assert.deepEqual(splitRuns(tracks.get(1), 200), [[0, 3], [3, 5]]);
  assert.deepEqual(splitRuns(tracks.get(1), 400), [[0, 5]]);
});

test("stacked layers sit on each other and reach 1", () => {
  const samples = [{ t: 0, emotions: emotions(0.4) }];
  const layers = stackLayers(samples, EMOTIONS);
  assert.equal(layers.angry[0].y0, 0);
  for (let i = 1; i < EMOTIONS.length; i += 1) {
    assert.equal(layers[EMOTIONS[i]][0].y0, layers[EMOTIONS[i - 1]][0].y1);
  }
  assert.ok(Math.abs(layers.neutral[0].y1 - 1) < 1e-9);
});

test("the stacked paths have one closed area per run, and a lone sample spans its interval", () => {
  const samples = [0, 200, 400, 2000].map((t) => ({ t, emotions: emotions(0.4) }));
  const paths = stackedPaths(samples, EMOTIONS, 200, (t) => t / 10, (p) => 100 - 100 * p);
  assert.deepEqual(Object.keys(paths), EMOTIONS);
  assert.equal(paths.happy.match(/M/g).length, 2);
  assert.equal(paths.happy.match(/Z/g).length, 2);
  assert.match(paths.happy, /M190,/); // the lone sample at 2000 ms starts half an interval early (190 = 1900/10)
  assert.match(paths.happy, /L210,/);
});

test("smoothing averages within a run, never across a gap, and keeps distributions", () => {
  const samples = [0, 200, 400, 1400].map((t, i) => ({ t, emotions: emotions([0.1, 0.7, 0.1, 0.9][i]) }));
  const smoothed = smoothSamples(samples, EMOTIONS, 200, 3);
  assert.ok(Math.abs(smoothed[1].emotions.happy - 0.3) < 1e-9);
  assert.ok(Math.abs(smoothed[0].emotions.happy - 0.4) < 1e-9);
  assert.equal(smoothed[3].emotions.happy, 0.9); // alone after the gap
  for (const sample of smoothed) {
    assert.ok(Math.abs(EMOTIONS.reduce((sum, label) => sum + sample.emotions[label], 0) - 1) < 1e-9);
  }
  assert.equal(samples[1].emotions.happy, 0.7); // the input is left alone
});

test("boxes scale into the letterboxed picture", () => {
  // a 640x360 video in a 400x400 box: 400x225, 87.5 px bars above and below
  const rect = containRect(640, 360, 400, 400);
  assert.deepEqual(rect, { x: 0, y: 87.5, width: 400, height: 225, scale: 0.625 });
  assert.deepEqual(scaleBox({ x: 320, y: 180, w: 64, h: 36 }, 640, 360, rect), { x: 200, y: 200, w: 40, h: 22.5 });
  // pillarboxed: a portrait image in a wide box
  const tall = containRect(300, 600, 800, 300);
  assert.deepEqual([tall.x, tall.y, tall.width, tall.height], [325, 0, 150, 300]);
});

test("track and overall figures come from the summary and the frames", () => {
  const track = { track_id: 1, first_ms: 200, last_ms: 1800, frames: 8, dominant: "happy",
                  dominant_share: { ...emotions(0), happy: 0.75 }, mean_emotions: emotions(0.5) };
  const stats = trackStats(track, 5);
  assert.equal(stats.visibleMs, 1600);
  assert.equal(stats.dominantShare, 0.75);
  const frames = [{ timestamp_ms: 0, faces: [] }, { timestamp_ms: 200, faces: [face(1, 0.5), face(2, 0.5)] },
                  { timestamp_ms: 400, faces: [face(1, 0.5)] }];
  const overall = overallStats(frames, { tracks: [track, track], overall: { mean_emotions: emotions(0.5),
    dominant: "happy", dominant_share: { ...emotions(0), happy: 1 } } }, 5);
  assert.deepEqual([overall.tracks, overall.faces, overall.visibleMs, overall.firstMs, overall.lastMs],
                   [2, 3, 400, 200, 400]);
  assert.equal(formatTime(65200), "1:05.2");
  assert.equal(formatTime(1500), "1.5 s");
});
