"""How a model setting is read: a hub id or a folder. Its own module, free of torch and
diffusers, so that `python -m bot` can check the setting before it imports them."""

from __future__ import annotations


def looks_like_path(model: str) -> bool:
    """A model setting meant as a folder rather than a hub id ("owner/name"): it starts with
    `/`, `.` or `~`, or has more than one `/`. A missing folder must not be sent to the hub."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
