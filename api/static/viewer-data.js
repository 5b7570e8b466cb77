// The viewer's data helpers: pure functions of the API's timeline and summary, no DOM, tested on their own
// (tests/unit/viewer_data.test.mjs under `node --test`).

// A track is absent between two of its samples further apart than this many sampling intervals
// (the same rule as fervid.results.track_runs, which draws plot.png).
export const GAP_INTERVALS = 1.5;

// The index of the sample nearest to tMs in sorted timesMs (the earlier one on a tie); -1 when there are none.
export function nearestSampleIndex(timesMs, tMs) {
  if (timesMs.length === 0) return -1;
  let low = 0;
  let high = timesMs.length - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (timesMs[middle] < tMs) low = middle + 1;
    else high = middle;
  }
  if (low > 0 && tMs - timesMs[low - 1] <= timesMs[low] - tMs) return low - 1;
  return low;
}

// The sampled frame to show at tMs: the nearest one, only if it lies within half a sampling interval; else null.
export function frameAt(frames, tMs, intervalMs) {
  const index = nearestSampleIndex(frames.map((frame) => frame.timestamp_ms), tMs);
  if (index < 0) return null;
  const frame = frames[index];
  // A millisecond of slack: media clocks and container timestamps round differently.
  return Math.abs(frame.timestamp_ms - tMs) <= intervalMs / 2 + 1 ? frame : null;
}

// The index of the sampled frame one step from tMs (direction -1 or +1), clamped to the ends.
export function stepSampleIndex(timesMs, tMs, direction) {
  if (timesMs.length === 0) return -1;
  const here = nearestSampleIndex(timesMs, tMs);
  let next = here;
  if (direction > 0) next = timesMs[here] > tMs + 1 ? here : here + 1;
  else next = timesMs[here] < tMs - 1 ? here : here - 1;
  return Math.min(timesMs.length - 1, Math.max(0, next));
}

// Per track id (ascending), its samples in time order: {t, emotions, box, dominant}.
export function tracksOf(frames) {
  const tracks = new Map();
  for (const frame of frames) {
    for (const face of frame.faces) {
      if (!tracks.has(face.track_id)) tracks.set(face.track_id, []);
      tracks.get(face.track_id).push({ t: frame.timestamp_ms, emotions: face.emotions, box: face.box,
                                       dominant: face.dominant });
    }
  }
  return new Map([...tracks.entries()].sort((a, b) => a[0] - b[0]));
}

// The stretches of samples without a gap, as [start, end) index pairs.
export function splitRuns(samples, intervalMs) {
  const runs = [];
  let start = 0;
  for (let i = 1; i <= samples.length; i += 1) {
    if (i === samples.length || samples[i].t - samples[i - 1].t > GAP_INTERVALS * intervalMs) {
      if (i > start) runs.push([start, i]);
      start = i;
    }
  }
  return runs;
}

// A centred moving average of the probabilities over `window` samples, never across a gap; a mean of
// distributions is a distribution, so each smoothed sample still sums to 1.
export function smoothSamples(samples, emotions, intervalMs, window = 5) {
  const half = Math.floor(window / 2);
  const smoothed = samples.map((sample) => ({ ...sample }));
  for (const [start, end] of splitRuns(samples, intervalMs)) {
    for (let i = start; i < end; i += 1) {
      const from = Math.max(start, i - half);
      const to = Math.min(end, i + half + 1);
      const means = {};
      for (const label of emotions) {
        let total = 0;
        for (let j = from; j < to; j += 1) total += samples[j].emotions[label];
        means[label] = total / (to - from);
      }
      smoothed[i].emotions = means;
    }
  }
  return smoothed;
}

// Per emotion (in the given order, bottom first), per sample, its band [y0, y1] of the stacked probabilities.
export function stackLayers(samples, emotions) {
  const layers = Object.fromEntries(emotions.map((label) => [label, []]));
  for (const sample of samples) {
    let floor = 0;
    for (const label of emotions) {
      const top = floor + sample.emotions[label];
      layers[label].push({ t: sample.t, y0: floor, y1: top });
      floor = top;
    }
  }
  return layers;
}

// SVG path data per emotion for one track's stacked chart: one closed area per run, nothing across gaps.
// x(tMs) and y(probability) map to chart units; a lone sample is drawn as wide as its sampling interval.
export function stackedPaths(samples, emotions, intervalMs, x, y) {
  const layers = stackLayers(samples, emotions);
  const paths = {};
  for (const label of emotions) {
    const parts = [];
    for (const [start, end] of splitRuns(samples, intervalMs)) {
      let band = layers[label].slice(start, end);
      if (band.length === 1) {
        const [only] = band;
        band = [{ ...only, t: only.t - intervalMs / 2 }, { ...only, t: only.t + intervalMs / 2 }];
      }
      const upper = band.map((point) => `${round(x(point.t))},${round(y(point.y1))}`);
      const lower = band.reverse().map((point) => `${round(x(point.t))},${round(y(point.y0))}`);
      parts.push(`M${upper.join("L")}L${lower.join("L")}Z`);
    }
    paths[label] = parts.join("");
  }
  return paths;
}

function round(value) {
  return Math.round(value * 100) / 100;
}

// Where media of mediaWidth x mediaHeight shows inside a box of boxWidth x boxHeight with object-fit: contain
// (letterboxed or pillarboxed, centred).
export function containRect(mediaWidth, mediaHeight, boxWidth, boxHeight) {
  if (!(mediaWidth > 0 && mediaHeight > 0)) return { x: 0, y: 0, width: boxWidth, height: boxHeight, scale: 1 };
  const scale = Math.min(boxWidth / mediaWidth, boxHeight / mediaHeight);
  const width = mediaWidth * scale;
  const height = mediaHeight * scale;
  return { x: (boxWidth - width) / 2, y: (boxHeight - height) / 2, width, height, scale };
}

// A face box in media pixels (the timeline's coordinates, of media frameWidth x frameHeight) to the pixels of
// `rect`, the media's place on screen.
export function scaleBox(box, frameWidth, frameHeight, rect) {
  const sx = rect.width / frameWidth;
  const sy = rect.height / frameHeight;
  return { x: rect.x + box.x * sx, y: rect.y + box.y * sy, w: box.w * sx, h: box.h * sy };
}

// A track's figures from its summary row: time visible (its sampled frames times the interval), first and
// last seen, its dominant emotion and the share of its frames that emotion leads, its mean probabilities.
export function trackStats(track, sampleFps) {
  return {
    visibleMs: (track.frames * 1000) / sampleFps,
    firstMs: track.first_ms,
    lastMs: track.last_ms,
    dominant: track.dominant,
    dominantShare: track.dominant_share[track.dominant],
    means: track.mean_emotions,
    leftOut: track.faces_left_out || 0,
  };
}

// The job's overall figures: time with any face visible, first and last face, the summary's overall emotion.
export function overallStats(frames, summary, sampleFps) {
  const withFaces = frames.filter((frame) => frame.faces.length > 0);
  const overall = summary.overall;
  return {
    tracks: summary.tracks.length,
    faces: frames.reduce((count, frame) => count + frame.faces.length, 0),
    visibleMs: (withFaces.length * 1000) / sampleFps,
    firstMs: withFaces.length ? withFaces[0].timestamp_ms : null,
    lastMs: withFaces.length ? withFaces[withFaces.length - 1].timestamp_ms : null,
    dominant: overall.dominant,
    dominantShare: overall.dominant ? overall.dominant_share[overall.dominant] : null,
    means: overall.mean_emotions,
    leftOut: overall.faces_left_out || 0, // faces the summary did not count: not reliable
  };
}

// "1:05.2" for 65200 ms; "0.0 s" style below a minute.
export function formatTime(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, "0")}`;
}
