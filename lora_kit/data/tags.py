"""Tags inside a caption: split, join and count, the way kohya does it.

A caption is a `separator`-joined list of tags ("sks star, red, on white"). kohya's `ss_tag_frequency`
counts lower-cased, stripped, comma-split tags per dataset folder; the captioner's summary table and the
exported metadata both use `tag_frequency` so the two always agree.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Tags of a caption, stripped, empty ones dropped (order kept)."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def join_tags(tags: Iterable[str], separator: str = ",") -> str:
    # kohya joins with the separator plus one space ("a, b"), which is what A1111 users write too.
    sep = separator if separator.endswith(" ") else separator + " "
    return sep.join(tags)


def tag_frequency(captions: Iterable[str], separator: str = ",") -> dict[str, int]:
    """{tag: count} over captions, tags lower-cased as in kohya's `set_tag_frequency`."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(t.lower() for t in split_tags(caption, separator))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
