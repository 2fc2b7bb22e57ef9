"""Saves what the hooked model's rotary consumes, with the tokens and grids of the same forward (test-only).

Wraps ``VideoRopeModelMixin.forward`` (to note input_ids, attention mask and grids) and
``VideoRopeRotaryEmbedding.forward`` (where the [3, B, L] positions are turned into cos/sin, after every
normalisation of the hook), and writes one ``step-<pid>-<n>.pt`` per training forward under the given directory.
"""

import itertools
import os
import threading
from pathlib import Path

import torch

_current = threading.local()
_counter = itertools.count()
_EVAL = os.environ.get("VIDEOROPE_RECORD_EVAL") == "1"  # also inference forwards (lmms-eval test)


def install(directory: str) -> None:
    from videorope_train.hook import common

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model_forward, rotary_forward = common.VideoRopeModelMixin.forward, common.VideoRopeRotaryEmbedding.forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, *args, **kwargs):
        _current.inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask,
            "image_grid_thw": kwargs.get("image_grid_thw"), "video_grid_thw": kwargs.get("video_grid_thw"),
            "collator_position_ids": position_ids,
        }
        return model_forward(self, input_ids, attention_mask, position_ids, *args, **kwargs)

    def rotary(self, x, position_ids):
        inputs = getattr(_current, "inputs", None)
        if (self.training or _EVAL) and inputs is not None:
            record = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in inputs.items()}
            record.update(rotary_position_ids=position_ids.detach().cpu(), compute_dtype=str(x.dtype))
            torch.save(record, out / f"step-{os.getpid()}-{next(_counter)}.pt")
        return rotary_forward(self, x, position_ids)

    common.VideoRopeModelMixin.forward = forward
    common.VideoRopeRotaryEmbedding.forward = rotary
