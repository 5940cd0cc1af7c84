"""What crosses Redis between the bot and its GPU workers, and under which keys.

Messages carry a job id and its options only. The prepared picture and the finished clip travel
out of band as Redis values with a time-to-live (`input`, `output`), so a message stays small and
a worker on another machine needs no shared disk. Progress goes over pub/sub (`events`); a
finished job's terminal event is also kept (`result`) so a job delivered twice, or an event
missed while the bot reconnected, is answered from it rather than run again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from generation.jobs import EventKind, JobEvent
from generation.results import EncodedClip

# The taskiq task every worker registers and the bot sends.
TASK_NAME = "svd.generate"
# The lease of a job's claim, which its worker renews every third of it: a claim missing for
# longer than this means the worker died (or stopped) without handing the job back.
CLAIM_SECONDS = 15.0


@dataclass(frozen=True)
class Keys:
    """Redis names under one prefix, so several bots can share a server."""

    prefix: str = "svd"

    @property
    def stream(self) -> str:
        """The Redis Stream of job messages (taskiq's queue)."""
        return f"{self.prefix}:jobs"

    @property
    def events(self) -> str:
        """Pub/sub channel: every job event, worker → bot."""
        return f"{self.prefix}:events"

    def input(self, job_id: str) -> str:
        return f"{self.prefix}:input:{job_id}"

    def output(self, job_id: str) -> str:
        return f"{self.prefix}:output:{job_id}"

    def result(self, job_id: str) -> str:
        """The job's terminal event, once it has one."""
        return f"{self.prefix}:result:{job_id}"

    def claim(self, job_id: str) -> str:
        """Held (with a short, renewed lease) by the worker running the job."""
        return f"{self.prefix}:claim:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        """A worker's heartbeat: present while it lives."""
        return f"{self.prefix}:worker:{name}"

    @property
    def workers(self) -> str:
        """The pattern matching every worker's heartbeat."""
        return f"{self.prefix}:worker:*"


def event_to_json(event: JobEvent) -> str:
    data: dict[str, Any] = {
        f.name: getattr(event, f.name)
        for f in fields(event)
        if getattr(event, f.name) not in (None, ())
    }
    data["kind"] = event.kind.value
    if event.clip is not None:
        clip = asdict(event.clip)
        clip["path"] = str(event.clip.path)
        data["clip"] = clip
    if event.hints:
        data["hints"] = list(event.hints)
    return json.dumps(data)


def event_from_json(text: str | bytes) -> JobEvent:
    """The inverse of `event_to_json`; raises ValueError on anything else."""
    try:
        data = json.loads(text)
        data["kind"] = EventKind(data["kind"])
        if "clip" in data:
            clip = dict(data["clip"])
            clip["path"] = Path(clip["path"])
            data["clip"] = EncodedClip(**clip)
        if "hints" in data:
            data["hints"] = tuple(data["hints"])
        known = {f.name for f in fields(JobEvent)}
        return JobEvent(**{k: v for k, v in data.items() if k in known})
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a job event: {exc}") from exc
