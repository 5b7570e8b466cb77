"""A photo's EXIF orientation: the quarter-turn and mirror that show it upright."""

from __future__ import annotations

from PIL import ExifTags, Image

from worker.media.stills import PIL_ERRORS

# Clockwise degrees that EXIF orientations 1-8 rotate by, after a left-right mirror for 2, 4, 5 and 7
# (exif_transpose does both).
EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 270, 6: 90, 7: 90, 8: 270}
EXIF_MIRRORED = {2, 4, 5, 7}


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except PIL_ERRORS:
        return 1  # unreadable EXIF: show the pixels as stored
