"""The one schema of what a build writes: Lance columns of `clips.lance` and `flow.lance`.

The writers (staging, the Lance sink) import these; SHARDS.md is tested against them.
"""

from __future__ import annotations

import pyarrow as pa

FLOW_SCHEMA = pa.schema([
    ("episode_id", pa.string()), ("source", pa.string()), ("embodiment", pa.string()), ("level", pa.int8()),
    ("pair_index", pa.int32()),
    # the clip whose pair range holds this pair (null for pairs across a clip boundary or in a dropped static clip)
    ("clip_key", pa.string()),
    ("flow_rgb", pa.binary()), ("action", pa.list_(pa.float32())), ("latent_action", pa.list_(pa.float32())),
])
