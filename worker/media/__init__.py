"""Media probing, frame sampling and decoding: which frames a job analyses, and their upright BGR pixels.

`probe.probe` demuxes packets (no decoding beyond one frame) to plan the sampled frames with exact indices and
container timestamps; `plan.split_plan` cuts that plan into segments workers share; `decode.decode_planned`
decodes only what a plan (or one segment of it) needs, seeking to keyframes across long gaps.

One module per concern: `limits` (file, pixel and duration limits), `sniff` (what a file is, for PyAV), `stills`
(Pillow: photos and the animations FFmpeg cannot read), `exif` (photo orientation), `index` (PyAV demuxing into a
`StreamIndex`), `plan` (the sampling rule), `geometry` (coded frame -> what a viewer sees), `decode` (the decode
loop), `isolated` (probe and decode in a decoder process under memory and CPU limits; `isolated_main` is its fork
server). Callers import from the module that defines a name; the worker probes and decodes through `isolated`.
"""
