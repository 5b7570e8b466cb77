// The viewer page: sign-in, the tenant's jobs, submit, and one job's media with its faces and emotions in sync.
// Plain ES module, no third-party code; the data helpers live in viewer-data.js.
import {
  containRect, formatTime, frameAt, nearestSampleIndex, overallStats, scaleBox, smoothSamples, stackedPaths,
  stepSampleIndex, tracksOf, trackStats,
} from "./viewer-data.js";

const KEY_STORAGE = "fervid.apiKey";
// The statuses a job can still leave, from the service (GET /viewer/palette.json), never a list of the page's own.
let ACTIVE = new Set();
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 1000, height: 100 };
const VIDEO_START_TIMEOUT_MS = 8000;

const $ = (id) => document.getElementById(id);
let palette = { emotions: [], colours: {}, track_colours: ["#fff"] };
let pollTimer = null;
let currentJob = null; // the open job view's state

// --- API -------------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function fetchWithKey(path, options, key = apiKey()) {
  return fetch(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } });
}

async function api(path, options = {}, key = apiKey()) {
  const response = await fetchWithKey(path, options, key);
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    return new ApiError(response.status, "http_error", `the server answered ${response.status}`);
  }
}

// A still a worker renders, or remote media the API fetches, is answered 202 until it is ready (429 while too many
// are under way): asked again after the answer's Retry-After until it is, or until `gaveUp()` says nobody waits for
// it any more (then null).
async function apiReady(path, options = {}, gaveUp = () => false) {
  for (;;) {
    const response = await fetchWithKey(path, options);
    if (response.status !== 202 && response.status !== 429) {
      if (!response.ok) throw await apiError(response);
      return response;
    }
    const waitS = Math.min(Number(response.headers.get("Retry-After")) || 1, 30);
    await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
    if (gaveUp()) return null;
  }
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut("Your API key is no longer accepted; sign in again.");
    return;
  }
  showNotice(error.message || String(error));
}

function showNotice(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

// --- sign-in and routing ---------------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const error = $("sign-in-error");
  error.hidden = true;
  try {
    await api("/v1/jobs?limit=1", {}, key);
  } catch (failure) {
    error.textContent = failure.status === 401 ? "That API key is not valid." : failure.message;
    error.hidden = false;
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  route();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  closeJob();
  $("jobs").replaceChildren();
  summaries.clear();
  showNotice(message);
  route();
}

function route() {
  clearTimeout(pollTimer);
  const signedIn = Boolean(apiKey());
  $("sign-in").hidden = signedIn;
  $("sign-out").hidden = !signedIn;
  const match = location.hash.match(/^#\/jobs\/([\w-]+)$/);
  $("jobs-view").hidden = !signedIn || Boolean(match);
  $("job-view").hidden = !signedIn || !match;
  if (!signedIn) {
    $("api-key").focus();
    return;
  }
  if (match) {
    openJob(match[1]);
  } else {
    closeJob();
    refreshJobs();
  }
}

// --- the jobs list ---------------------------------------------------------------------------------------------

const summaries = new Map(); // job id -> summary of a succeeded job (final, so fetched once)

async function refreshJobs() {
  clearTimeout(pollTimer);
  let page;
  try {
    page = await apiJson("/v1/jobs?limit=100");
  } catch (error) {
    $("jobs-state").textContent = "The jobs could not be loaded.";
    handleError(error);
    pollTimer = setTimeout(refreshJobs, 5000);
    return;
  }
  if (!$("jobs-view").hidden) {
    renderJobs(page.items);
    const busy = page.items.some((job) => ACTIVE.has(job.status));
    pollTimer = setTimeout(refreshJobs, busy ? 1000 : 5000);
  }
}

function renderJobs(items) {
  $("jobs-state").textContent = items.length ? "" : "No jobs yet: submit a video or an image above.";
  $("jobs-state").hidden = items.length > 0;
  $("jobs").replaceChildren(...items.map(jobRow));
}

function jobRow(job) {
  const row = element("li", { class: "job", "data-job-id": job.job_id, "data-status": job.status });
  const name = element("div", { class: "name" });
  name.append(element("a", { href: `#/jobs/${job.job_id}` }, job.filename || job.job_id),
              element("div", { class: "meta" }, new Date(job.created_at).toLocaleString()));
  const status = element("div", {}, element("span", { class: `status ${job.status}` }, job.status));
  const { frames_done: done, frames_total: total } = job.progress;
  const progress = element("progress", { class: "progress", max: String(total || 1),
                                         value: String(job.status === "succeeded" ? total || 1 : done) });
  const progressCell = element("div", {}, progress,
                               element("div", { class: "meta" }, total ? `${done} / ${total} frames` : ""));
  const found = element("div", { class: "found" }, mediaLine(job));
  if (job.status === "succeeded") fillFound(job.job_id, found);
  const actions = element("div", { class: "actions" });
  if (ACTIVE.has(job.status)) actions.append(button("Cancel", () => jobAction(job, "cancel")));
  actions.append(button("Delete", () => jobAction(job, "delete")));
  row.append(name, status, progressCell, found, actions);
  if (job.error) row.append(element("div", { class: "failure" }, `${job.error.code}: ${job.error.message}`));
  return row;
}

function mediaLine(job) {
  const media = job.media;
  if (media.kind === "image") return `image ${media.width}×${media.height}`;
  if (media.kind === "video") return `video ${formatTime(media.duration_ms)}`;
  return "";
}

async function fillFound(jobId, target) {
  try {
    if (!summaries.has(jobId)) summaries.set(jobId, await apiJson(`/v1/jobs/${jobId}/summary`));
  } catch {
    return; // the figures are a courtesy; the row stands without them
  }
  const summary = summaries.get(jobId);
  const faces = summary.tracks.reduce((count, track) => count + track.frames, 0);
  const tracks = summary.tracks.length;
  target.append(element("div", {}, `${tracks} ${tracks === 1 ? "track" : "tracks"} · ${faces} faces`));
}

async function jobAction(job, action) {
  if (action === "delete" && !confirm(`Delete ${job.filename || job.job_id} and its results?`)) return;
  try {
    await api(action === "delete" ? `/v1/jobs/${job.job_id}` : `/v1/jobs/${job.job_id}/cancel`,
              { method: action === "delete" ? "DELETE" : "POST" });
  } catch (error) {
    handleError(error);
  }
  refreshJobs();
}

// --- submit ----------------------------------------------------------------------------------------------------

function submitJob(event) {
  event.preventDefault();
  const file = $("submit-file").files[0];
  const uri = $("submit-uri").value.trim();
  const fps = $("submit-fps").value;
  const failure = $("submit-error");
  failure.hidden = true;
  if (!file && !uri) {
    failure.textContent = "Choose a file or give a source URI.";
    failure.hidden = false;
    return;
  }
  const request = new XMLHttpRequest();
  request.open("POST", "/v1/jobs");
  request.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
  const progress = $("upload-progress");
  request.upload.onprogress = (progressEvent) => {
    if (progressEvent.lengthComputable) progress.value = progressEvent.loaded / progressEvent.total;
  };
  request.onload = () => {
    progress.hidden = true;
    $("submit-button").disabled = false;
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch {
      body = null;
    }
    if (request.status === 202 || request.status === 200) {
      $("submit-form").reset();
      const list = $("jobs");
      list.querySelector(`[data-job-id="${body.job_id}"]`)?.remove();
      list.prepend(jobRow(body)); // in the list at once, before the next poll
      $("jobs-state").hidden = true;
      refreshJobs();
      return;
    }
    if (request.status === 401) {
      signOut("Your API key is no longer accepted; sign in again.");
      return;
    }
    failure.textContent = body?.error ? `${body.error.code}: ${body.error.message}` : `error ${request.status}`;
    failure.hidden = false;
  };
  request.onerror = () => {
    progress.hidden = true;
    $("submit-button").disabled = false;
    failure.textContent = "The upload did not reach the server; check the connection and try again.";
    failure.hidden = false;
  };
  $("submit-button").disabled = true;
  if (file) {
    const form = new FormData();
    form.append("file", file);
    form.append("sample_fps", fps);
    progress.value = 0;
    progress.hidden = false;
    request.send(form);
  } else {
    request.setRequestHeader("Content-Type", "application/json");
    request.send(JSON.stringify({ source_uri: uri, sample_fps: Number(fps) }));
  }
}

// --- one job ---------------------------------------------------------------------------------------------------

async function openJob(jobId) {
  closeJob();
  const state = { jobId, job: null, frames: [], summary: null, tracks: new Map(), colours: new Map(),
                  mode: null, timeMs: 0, stillIndex: 0, closed: false, urls: [] };
  currentJob = state;
  $("job-body").hidden = true;
  $("job-state").hidden = false;
  $("job-state").textContent = "Loading job…";
  $("job-title").textContent = "Job";
  $("job-status").textContent = "";
  try {
    state.job = await apiJson(`/v1/jobs/${jobId}`);
  } catch (error) {
    $("job-state").textContent = error.status === 404 ? "No such job for this key." : "The job could not be loaded.";
    if (error.status !== 404) handleError(error);
    return;
  }
  const job = state.job;
  $("job-title").textContent = job.filename || job.job_id;
  $("job-status").textContent = job.status;
  $("job-status").className = `status ${job.status}`;
  $("download-annotated").hidden = !(job.status === "succeeded" && job.media.kind === "video");
  if (job.status !== "succeeded") {
    const { frames_done: done, frames_total: total } = job.progress;
    $("job-state").textContent = job.error ? `This job ${job.status}: ${job.error.code}: ${job.error.message}` :
      ACTIVE.has(job.status) ? `This job is ${job.status} (${done} / ${total ?? "?"} frames); its results ` +
      "appear when it has succeeded." : `This job was ${job.status}.`;
    if (ACTIVE.has(job.status)) pollTimer = setTimeout(() => state === currentJob && openJob(jobId), 2000);
    return;
  }
  try {
    [state.summary, state.frames] = await Promise.all([apiJson(`/v1/jobs/${jobId}/summary`), wholeTimeline(jobId)]);
  } catch (error) {
    $("job-state").textContent = "The results could not be loaded.";
    handleError(error);
    return;
  }
  if (state.closed) return;
  state.intervalMs = 1000 / job.sample_fps;
  state.times = state.frames.map((frame) => frame.timestamp_ms);
  state.tracks = tracksOf(state.frames);
  [...state.tracks.keys()].forEach((trackId, i) => state.colours.set(trackId, palette.track_colours[i % palette.track_colours.length]));
  const last = state.times.length ? state.times[state.times.length - 1] : 0;
  state.durationMs = Math.max(job.media.duration_ms || 0, last + state.intervalMs);
  $("job-state").hidden = true;
  $("job-body").hidden = false;
  renderLegend();
  renderOverall(state);
  renderTracks(state);
  await showMedia(state);
}

async function wholeTimeline(jobId) {
  const frames = [];
  let cursor = null;
  do {
    const page = await apiJson(`/v1/jobs/${jobId}/timeline?limit=1000${cursor ? `&cursor=${cursor}` : ""}`);
    frames.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return frames;
}

function closeJob() {
  if (!currentJob) return;
  currentJob.closed = true;
  for (const url of currentJob.urls) URL.revokeObjectURL(url);
  const video = $("video");
  video.pause();
  video.removeAttribute("src");
  video.load();
  video.hidden = true;
  $("still").hidden = true;
  $("still").removeAttribute("src");
  $("faces").hidden = true;
  $("mode-note").hidden = true;
  currentJob = null;
}

async function showMedia(state) {
  const { job } = state;
  const image = job.media.kind === "image";
  $("controls").hidden = image;
  $("faces").hidden = !image;
  if (image) renderFaceBars(state);
  let link = null;
  try {
    link = (await apiJson(`/v1/jobs/${job.job_id}/media-link`, { method: "POST" })).url;
  } catch (error) {
    if (error.status === 401) return handleError(error);
  }
  if (state.closed) return;
  if (link) {
    try {
      // Remote media is fetched by the API before it can be served: wait for it here, not in a media element.
      if (!(await apiReady(link, { headers: { Range: "bytes=0-0" } }, () => state.closed))) return;
    } catch (error) {
      if (error.status === 401) return handleError(error);
      link = null;
    }
  }
  if (image) {
    state.mode = "image";
    const still = $("still");
    still.hidden = false;
    still.onload = () => draw(state, 0);
    still.onerror = () => useStills(state, "This browser cannot show the image; showing the decoded frame.");
    if (link) still.src = link;
    else useStills(state, "The original media is not available; showing the decoded frame.");
    return;
  }
  if (!link) return useStills(state, "The original media is not available; showing the sampled frames.");
  playVideo(state, link);
}

function playVideo(state, link) {
  state.mode = "video";
  const video = $("video");
  video.hidden = false;
  video.controls = true;
  const fallback = () => {
    if (state.mode === "video" && !state.closed) {
      useStills(state, "This browser cannot play the file; showing the sampled frames, decoded on the server.");
    }
  };
  const timer = setTimeout(fallback, VIDEO_START_TIMEOUT_MS);
  video.onloadeddata = () => {
    clearTimeout(timer);
    if (!video.videoWidth) fallback(); // audio decoded, the picture not
    else draw(state, video.currentTime * 1000);
  };
  video.onerror = () => {
    clearTimeout(timer);
    fallback();
  };
  video.onseeked = () => draw(state, video.currentTime * 1000);
  video.onplay = () => {
    $("play").textContent = "Pause";
    followFrames(state);
  };
  video.onpause = () => {
    $("play").textContent = "Play";
    draw(state, video.currentTime * 1000);
  };
  video.src = link;
}

// Redraws on every presented frame while playing, at the frame's own media time.
function followFrames(state) {
  const video = $("video");
  if ("requestVideoFrameCallback" in video) {
    const onFrame = (_now, metadata) => {
      if (state.closed || state.mode !== "video") return;
      draw(state, metadata.mediaTime * 1000);
      if (!video.paused) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    const onTick = () => {
      if (state.closed || video.paused) return;
      draw(state, video.currentTime * 1000);
      requestAnimationFrame(onTick);
    };
    requestAnimationFrame(onTick);
  }
}

function useStills(state, note) {
  const video = $("video");
  video.pause();
  video.hidden = true;
  state.mode = "stills";
  $("mode-note").textContent = note;
  $("mode-note").hidden = false;
  $("still").hidden = false;
  $("still").onerror = null;
  showStill(state, 0);
}

async function showStill(state, index) {
  const frame = state.frames[index];
  if (!frame) return;
  state.stillIndex = index;
  try {
    const gaveUp = () => state.closed || state.stillIndex !== index;
    const response = await apiReady(`/v1/jobs/${state.jobId}/frames/${frame.frame_index}.jpg`, {}, gaveUp);
    if (!response) return;
    const blob = await response.blob();
    if (gaveUp()) return;
    const url = URL.createObjectURL(blob);
    state.urls.push(url);
    const still = $("still");
    still.onload = () => draw(state, frame.timestamp_ms);
    still.src = url;
  } catch (error) {
    handleError(error);
  }
}

function seek(state, tMs) {
  const clamped = Math.max(0, Math.min(tMs, state.durationMs));
  if (state.mode === "video") $("video").currentTime = clamped / 1000; // `seeked` redraws
  else if (state.mode === "stills") showStill(state, Math.max(0, nearestSampleIndex(state.times, clamped)));
}

function step(state, direction) {
  const here = state.mode === "stills" ? state.times[state.stillIndex] : $("video").currentTime * 1000;
  const index = stepSampleIndex(state.times, here, direction);
  if (index < 0) return;
  if (state.mode === "video") {
    $("video").pause();
    // Half a millisecond past the sample: the frame shown at a time is the last one that starts at or before it.
    $("video").currentTime = (state.times[index] + 0.5) / 1000;
  } else {
    showStill(state, index);
  }
}

function togglePlay(state) {
  if (state.mode === "video") {
    const video = $("video");
    if (video.paused) video.play().catch((error) => showNotice(`The video cannot play: ${error.message}`));
    else video.pause();
  } else if (state.mode === "stills") {
    if (state.slideshow) {
      clearInterval(state.slideshow);
      state.slideshow = null;
      $("play").textContent = "Play";
    } else {
      $("play").textContent = "Pause";
      state.slideshow = setInterval(() => {
        if (state.closed || state.stillIndex >= state.frames.length - 1) {
          clearInterval(state.slideshow);
          state.slideshow = null;
          $("play").textContent = "Play";
        } else {
          showStill(state, state.stillIndex + 1);
        }
      }, Math.max(state.intervalMs, 250));
    }
  }
}

// Draws the boxes of the sampled frame at tMs (if one lies within half an interval) over the letterboxed media,
// and moves every chart's cursor there. The canvas carries what it drew, for tests: data-boxes, data-time-ms.
function draw(state, tMs) {
  if (state.closed) return;
  state.timeMs = tMs;
  const canvas = $("overlay");
  const stage = $("stage");
  const ratio = window.devicePixelRatio || 1;
  const width = stage.clientWidth;
  const height = stage.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const media = state.mode === "video" ? $("video") : $("still");
  const naturalWidth = media.videoWidth || media.naturalWidth || state.job.media.width;
  const naturalHeight = media.videoHeight || media.naturalHeight || state.job.media.height;
  const rect = containRect(naturalWidth, naturalHeight, width, height);
  const frame = state.mode === "stills" ? state.frames[state.stillIndex] : frameAt(state.frames, tMs, state.intervalMs);
  const faces = frame ? frame.faces : [];
  context.lineWidth = 2;
  context.font = "600 13px system-ui, sans-serif";
  for (const face of faces) {
    const colour = state.colours.get(face.track_id) || "#fff";
    const box = scaleBox(face.box, state.job.media.width, state.job.media.height, rect);
    const reliable = !face.quality || face.quality.reliable;
    context.strokeStyle = colour;
    // A face whose emotions cannot be trusted (small, blurred, turned, tilted) is drawn dashed and says why.
    context.setLineDash(reliable ? [] : [6, 4]);
    context.strokeRect(box.x, box.y, box.w, box.h);
    context.setLineDash([]);
    const label = reliable ? `track ${face.track_id} · ${face.dominant}`
      : `track ${face.track_id} · ${face.dominant}? (${face.quality.unreliable_because.join(", ")})`;
    const labelWidth = context.measureText(label).width + 8;
    const top = box.y >= 18 ? box.y - 18 : box.y + box.h;
    context.fillStyle = colour;
    context.fillRect(box.x - 1, top, labelWidth, 18);
    context.fillStyle = "#fff";
    context.fillText(label, box.x + 3, top + 13);
  }
  canvas.dataset.boxes = JSON.stringify(faces.map((face) => ({ track_id: face.track_id, ...face.box })));
  canvas.dataset.unreliable = JSON.stringify(faces.filter((face) => face.quality && !face.quality.reliable)
    .map((face) => face.track_id));
  canvas.dataset.timeMs = String(frame ? frame.timestamp_ms : -1);
  $("clock").textContent = `${formatTime(tMs)} / ${formatTime(state.durationMs)}`;
  for (const cursor of document.querySelectorAll(".chart .cursor")) {
    const x = (tMs / state.durationMs) * CHART.width;
    cursor.setAttribute("x1", String(x));
    cursor.setAttribute("x2", String(x));
  }
}

// --- charts and figures ----------------------------------------------------------------------------------------

function renderLegend() {
  $("legend").replaceChildren(...palette.emotions.map((label) => {
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = palette.colours[label];
    return element("span", {}, swatch, label);
  }));
}

function renderTracks(state) {
  $("tracks-state").hidden = state.tracks.size > 0;
  const summaryById = new Map(state.summary.tracks.map((track) => [track.track_id, track]));
  $("tracks").replaceChildren(...[...state.tracks.keys()].map((trackId) => {
    const section = element("section", { class: "track", "data-track-id": String(trackId) });
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = state.colours.get(trackId);
    section.append(element("h3", {}, swatch, `Track ${trackId}`));
    const summary = summaryById.get(trackId);
    if (summary) section.append(figures(trackStats(summary, state.job.sample_fps)));
    section.append(chart(state, trackId));
    return section;
  }));
}

function chart(state, trackId) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `emotions of track ${trackId} over time`);
  const layers = document.createElementNS(SVG, "g");
  svg.append(layers);
  const cursor = document.createElementNS(SVG, "line");
  cursor.setAttribute("class", "cursor");
  cursor.setAttribute("y1", "0");
  cursor.setAttribute("y2", String(CHART.height));
  cursor.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(cursor);
  const paint = () => {
    let samples = state.tracks.get(trackId);
    if ($("smoothing").checked) samples = smoothSamples(samples, palette.emotions, state.intervalMs);
    const paths = stackedPaths(samples, palette.emotions, state.intervalMs,
                               (t) => (t / state.durationMs) * CHART.width, (p) => CHART.height * (1 - p));
    layers.replaceChildren(...palette.emotions.map((label) => {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", paths[label]);
      path.setAttribute("fill", palette.colours[label]);
      path.setAttribute("data-emotion", label);
      return path;
    }));
  };
  paint();
  svg.repaint = paint;
  svg.addEventListener("click", (event) => {
    const bounds = svg.getBoundingClientRect();
    seek(state, ((event.clientX - bounds.left) / bounds.width) * state.durationMs);
  });
  return svg;
}

function renderOverall(state) {
  $("overall").replaceChildren(...figures(overallStats(state.frames, state.summary, state.job.sample_fps)).children);
}

function figures(stats) {
  const box = element("div", { class: "stats" });
  const figure = (name, value) => element("div", { class: "figure" }, element("b", {}, name), value);
  if (stats.tracks !== undefined) box.append(figure("tracks", String(stats.tracks)), figure("faces", String(stats.faces)));
  box.append(figure("time visible", formatTime(stats.visibleMs)), figure("first seen", formatTime(stats.firstMs)),
             figure("last seen", formatTime(stats.lastMs)),
             figure("mostly", stats.dominant ? `${stats.dominant} (${percent(stats.dominantShare)} of frames)` : "–"));
  if (stats.leftOut) {
    box.append(figure("left out", `${stats.leftOut} unreliable ${stats.leftOut === 1 ? "face" : "faces"}`));
  }
  if (stats.means) {
    const means = element("div", { class: "means" });
    for (const label of palette.emotions) {
      const swatch = element("span", { class: "swatch" });
      swatch.style.background = palette.colours[label];
      means.append(element("span", {}, swatch, `${label} ${percent(stats.means[label])}`));
    }
    box.append(means);
  }
  return box;
}

function renderFaceBars(state) {
  const frame = state.frames[0];
  const faces = frame ? frame.faces : [];
  $("faces").replaceChildren(...(faces.length ? faces : [null]).map((face, i) => {
    if (!face) return element("p", { class: "state" }, "No faces were found in this image.");
    const row = element("div", { class: "face", "data-track-id": String(face.track_id) });
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = state.colours.get(face.track_id);
    row.append(element("div", {}, swatch, `Face ${i + 1} (track ${face.track_id}): mostly ${face.dominant}`));
    const bars = element("div", { class: "bars", role: "img", "aria-label": `emotions of face ${i + 1}` });
    for (const label of palette.emotions) {
      const bar = element("span", { title: `${label} ${percent(face.emotions[label])}`, "data-emotion": label });
      bar.style.background = palette.colours[label];
      bar.style.width = `${face.emotions[label] * 100}%`;
      bars.append(bar);
    }
    row.append(bars);
    return row;
  }));
}

// --- downloads -------------------------------------------------------------------------------------------------

async function download(kind) {
  const state = currentJob;
  if (!state?.job) return;
  const base = state.job.filename ? state.job.filename.replace(/\.[^.]*$/, "") : state.jobId;
  let blob;
  try {
    if (kind === "mp4") {
      blob = await annotatedVideo(state);
      if (!blob) return;
    } else if (kind === "json") {
      const body = { job: state.job, summary: state.summary, timeline: state.frames };
      blob = new Blob([JSON.stringify(body, null, 2)], { type: "application/json" });
    } else {
      blob = await (await api(`/v1/jobs/${state.jobId}/${kind === "csv" ? "timeline.csv" : "plot.png"}`)).blob();
    }
  } catch (error) {
    handleError(error);
    return;
  }
  const url = URL.createObjectURL(blob);
  const link = element("a", { href: url, download: kind === "mp4" ? `${base}-annotated.mp4` : `${base}.${kind}` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// The annotated video, once a worker has rendered it: the button shows how far it is meanwhile. Null when the
// page moved to another job while it waited.
async function annotatedVideo(state) {
  const button = $("download-annotated");
  button.disabled = true;
  try {
    for (;;) {
      const response = await fetchWithKey(`/v1/jobs/${state.jobId}/annotated.mp4`, {});
      if (response.status !== 202 && response.status !== 429) {
        if (!response.ok) throw await apiError(response);
        return await response.blob();
      }
      if (response.status === 202) {
        const { frames_done: done, frames_total: total } = await response.json();
        button.textContent = total ? `Rendering ${Math.floor((100 * done) / total)} %` : "Rendering…";
      }
      const waitS = Math.min(Number(response.headers.get("Retry-After")) || 1, 30);
      await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
      if (state !== currentJob) return null;
    }
  } finally {
    button.disabled = false;
    button.textContent = "Annotated video";
  }
}

// --- small DOM helpers -----------------------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function button(label, onClick) {
  const node = element("button", { type: "button" }, label);
  node.addEventListener("click", onClick);
  return node;
}

function percent(share) {
  return share === null || share === undefined ? "–" : `${Math.round(share * 100)} %`;
}

// --- start -----------------------------------------------------------------------------------------------------

function onKey(event) {
  const state = currentJob;
  if (!state?.mode || $("job-view").hidden) return;
  if (event.target.closest("input, textarea, select, button")) return;
  if (event.key === " ") togglePlay(state);
  else if (event.key === "ArrowLeft") step(state, -1);
  else if (event.key === "ArrowRight") step(state, +1);
  else return;
  event.preventDefault(); // before the focused <video>'s own handling
}

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("submit-form").addEventListener("submit", submitJob);
  $("play").addEventListener("click", () => currentJob && togglePlay(currentJob));
  $("step-back").addEventListener("click", () => currentJob && step(currentJob, -1));
  $("step-forward").addEventListener("click", () => currentJob && step(currentJob, +1));
  $("smoothing").addEventListener("change", () => {
    for (const svg of document.querySelectorAll(".chart")) svg.repaint();
  });
  for (const node of document.querySelectorAll("[data-download]")) {
    node.addEventListener("click", () => download(node.dataset.download));
  }
  window.addEventListener("keydown", onKey, true);
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => currentJob?.frames && draw(currentJob, currentJob.timeMs));
  try {
    palette = await (await fetch("/viewer/palette.json")).json();
    ACTIVE = new Set(palette.active_statuses);
  } catch {
    showNotice("The page could not load its colours; reload it.");
  }
  route();
}

start();
