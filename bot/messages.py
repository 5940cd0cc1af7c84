"""The words the bot says. Plain functions from core values to Discord-flavoured text (markdown,
`<t:…:R>` timestamps, mentions), with no discord.py import, so they are tested as plain strings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from generation.jobs import EventKind, JobEvent, QueueSnapshot
from generation.options import AnimateOptions
from storage.audit import AuditEntry
from storage.errors import discord_timestamp
from storage.jobs import JobRecord, JobState
from storage.member_defaults import MemberDefaults
from storage.quota_rules import clips, counts_for
from storage.quotas import QuotaStatus
from storage.usage import GuildUsage

if TYPE_CHECKING:
    from bot.service import Overview

BAR_WIDTH = 16
# Discord's limit on a message's content.
MAX_CONTENT = 2000


def mention(user_id: int) -> str:
    return f"<@{user_id}>"


def relative_time(when: datetime) -> str:
    return discord_timestamp(when, "R")


def duration(seconds: float | None) -> str:
    """'about 40 s', 'about 3 min': estimates, so never falsely precise."""
    if seconds is None or math.isnan(seconds):
        return "a moment"
    if round(seconds) < 60:
        return f"about {max(1, round(seconds))} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"about {round(minutes)} min"
    return f"about {minutes / 60:.1f} h"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    total = max(total, 1)
    filled = round(width * min(done, total) / total)
    return "▰" * filled + "▱" * (width - filled)


def progress_text(job: JobRecord, event: JobEvent) -> str:
    """The public progress message for a job, from its latest event."""
    who = mention(job.user_id)
    match event.kind:
        case EventKind.QUEUED | EventKind.POSITION:
            position = event.position or 1
            ahead = "next in line" if position <= 1 else f"at position **{position}** in the queue"
            return f"⏳ {who}'s clip is {ahead} · starts in {duration(event.eta_seconds)}"
        case EventKind.STALLED if event.reason == "resuming":
            return f"⏳ A GPU worker is back; {who}'s clip goes on as soon as it takes it up."
        case EventKind.STALLED:
            return (
                f"⏸️ {who}'s clip is on hold: no GPU worker is connected right now. It goes on "
                "as soon as one is back; nothing is lost."
            )
        case EventKind.STARTED | EventKind.LOADING:
            what = "Loading the model" if event.kind is EventKind.LOADING else "Starting"
            return f"🎬 {what} for {who}…"
        case EventKind.STEP:
            step, total = event.step or 0, event.total or 1
            percent = round(100 * step / max(total, 1))
            return (
                f"🎬 Animating for {who} · step {step}/{total}\n"
                f"`{bar(step, total)}` {percent}% · {duration(event.eta_seconds)} left"
            )
        case EventKind.DECODING:
            return f"🎞️ Decoding frames for {who}…\n`{bar(1, 1)}` 100%"
        case EventKind.ENCODING:
            return f"📦 Encoding {who}'s clip…"
        case EventKind.INTERRUPTED:
            return (
                f"⏸️ The bot is restarting. {who}'s clip is kept and will be made when it is "
                "back; nothing is lost."
            )
        case _:
            return f"⏳ Working on {who}'s clip…"


def done_text(job: JobRecord, event: JobEvent) -> str:
    """What goes with the clip: enough settings for anyone to reproduce it."""
    options = AnimateOptions.from_dict(job.options)
    parts = [
        f"seed `{event.seed if event.seed is not None else job.seed}`",
        f"motion `{options.motion_bucket_id}`",
        f"noise `{options.noise_aug_strength:g}`",
        f"fps `{options.fps}`",
        f"steps `{options.num_inference_steps}`",
    ]
    if options.preset:
        parts.insert(0, f"preset `{options.preset}`")
    if options.quality == "draft":
        parts.append("quality `draft`")
    parts.extend(_extras(options))
    if event.seconds is not None:
        parts.append(f"made in {max(1, round(event.seconds))} s")
    lines = [f"✅ {mention(job.user_id)}, your clip is ready · " + " · ".join(parts)]
    if event.fallback_from:
        # The load time is then the model's reload under that plan, not a change of model.
        reload = f" (reloading the model for it took {event.load_seconds:.0f} s)"
        lines.append(
            "ℹ️ The GPU ran short of memory, so this clip was made with a slower, leaner plan"
            + (reload if event.load_seconds else "")
            + "."
        )
    elif event.load_seconds:
        # Another model than the last clip's, or the first clip after a failed start-up load.
        lines.append(f"ℹ️ Loading the model for this clip took {event.load_seconds:.0f} s.")
    if event.clip is not None and event.clip.reduced:
        lines.append("ℹ️ The file was compressed harder to fit Discord's upload limit.")
    lines.extend(f"💡 {hint}" for hint in event.hints)
    return truncate("\n".join(lines))


def clip_alt_text(job: JobRecord) -> str:
    """The clip's description for screen readers (Discord's alt text, 1024 characters at most):
    what it is, not the buttons' or settings' markdown."""
    # From the stored values as they are: this runs on every delivery, and no record's options
    # may keep a finished clip from being posted.
    options = job.options
    made = "a draft clip" if (options.get("cache_interval") or 1) > 1 else "a short clip"
    seed = job.seed if job.seed is not None else options.get("seed")
    text = (
        f"Video: {made} animated from a still picture by Stable Video Diffusion, "
        f"motion {options.get('motion_bucket_id', 127)} of 255"
    )
    if options.get("fit") == "whole":
        text += ", the whole picture on a blurred copy of itself"
    if options.get("ping_pong"):
        text += ", played forwards then backwards"
    if options.get("interpolate"):
        text += ", smoothed with in-between frames"
    return f"{text}, seed {seed}." if seed is not None else f"{text}."


def failed_text(job: JobRecord, message: str) -> str:
    # Every failure is refunded; say so unless the reason already does.
    charged = "" if "not charged" in message else " You were not charged."
    return truncate(f"❌ {mention(job.user_id)}, your clip could not be made. {message}{charged}")


def cancelled_text(job: JobRecord) -> str:
    return f"🚫 {mention(job.user_id)}'s clip was cancelled. No clip was charged."


def kept_for_later_text(job: JobRecord) -> str:
    """The progress message of a finished clip Discord would not take: no longer "Encoding"."""
    return (
        f"📦 {mention(job.user_id)}'s clip is finished, but I could not post it here. It is "
        "kept safe: I keep trying, and `/queue` hands it over at once."
    )


def undelivered_text(job: JobRecord, *, no_room: bool = False) -> str:
    """`no_room`: the clip is too large for Discord and the disk had no room to shrink it."""
    why = (
        "it is too large for Discord, and my server has no disk space left to make it smaller"
        if no_room
        else "Discord would not accept the upload"
    )
    return (
        f"⚠️ {mention(job.user_id)}, your clip is finished but {why}. It is kept safe (job "
        f"`{job.job_id[:8]}`): I will keep trying, and `/queue` hands it to you at once. You "
        "are not charged until you have it."
    )


def handed_over_privately_note(job: JobRecord) -> str:
    """Under a kept clip handed over in another channel than its own, to its member alone."""
    return f"-# Asked for in <#{job.channel_id}>, so only you can see it here: save it to keep it."


def not_handed_over_text(jobs: Sequence[JobRecord]) -> str:
    ids = ", ".join(f"`{job.job_id[:8]}`" for job in jobs)
    # Not always Discord's doing: the disk may have had no room to make a clip smaller.
    kept = "They are" if len(jobs) > 1 else "It is"
    return (
        f"⚠️ I could not post {ids} just now either. {kept} kept safe and I keep trying; "
        "you are not charged until you have it."
    )


def dm_clip_text(job: JobRecord, event: JobEvent, why: str = "permissions") -> str:
    """The clip sent privately because it cannot go to the channel it was asked in: the bot
    may not post there ("permissions"), the channel is gone ("gone"), or it is a thread that
    was archived or locked ("archived")."""
    channel = f"<#{job.channel_id}>"
    if why == "gone":
        reason = f"the channel it was asked for in ({channel}) no longer exists."
    elif why == "archived":
        reason = f"the thread it was asked for in ({channel}) was archived or locked."
    else:
        reason = (
            f"I can't post clips in {channel}: I need the Send Messages and Attach Files "
            "permissions there (a moderator can grant them)."
        )
    return truncate(done_text(job, event) + f"\nℹ️ I sent it here because {reason}")


def quota_text(status: QuotaStatus, *, subject: str = "You") -> str:
    if status.limit is None:
        return f"♾️ {subject} can make unlimited clips."
    if status.limit == 0:
        return f"⛔ {subject} cannot make clips on this server (limit set to 0 by a moderator)."
    have = "have" if subject == "You" else "has"
    text = (
        f"🎟️ {subject} {have} **{status.remaining}** of {clips(status.limit)} left "
        f"({counts_for(status.period)})."
    )
    if status.next_available_at is not None and (status.remaining or 0) < status.limit:
        text += f" Next clip back {relative_time(status.next_available_at)}."
    return text


def defaults_text(options: AnimateOptions, mine: MemberDefaults, *, saved: bool) -> str:
    """What a clip gets when the member types nothing (`options`), each of their own marked."""

    head = "✅ Saved. " if saved else ""
    text = f"{head}⚙️ With nothing typed, your clips here get: {_clip_settings(options, mine)}."
    if mine.chosen():
        return (
            f"{text}\nYours apply in every server I'm in, to `/animate` and Apps → **Animate**; "
            "what you type in `/animate` still wins. `/defaults forget:` drops one, `reset:True` "
            "all of them."
        )
    return (
        f"{text}\nSet your own for `/animate` and Apps → **Animate** with `/defaults`, "
        "e.g. `/defaults format:gif preset:dramatic`."
    )


def _clip_settings(options: AnimateOptions, mine: MemberDefaults) -> str:
    """'motion `127` · format `gif` (yours) · …': a clip's settings, the member's own marked."""

    def yours(value: str, own: bool) -> str:
        return f"{value} (yours)" if own else value

    motion = f"motion `{options.motion_bucket_id}`"
    if options.preset is not None:
        motion += f" (preset `{options.preset}`)"
    parts = [
        yours(motion, mine.preset is not None or mine.motion_bucket_id is not None),
        yours(f"format `{options.format}`", mine.format is not None),
        yours(f"fps `{options.fps}`", mine.fps is not None),
        yours(f"quality `{options.quality}`", mine.quality is not None),
        f"steps `{options.num_inference_steps}`",
    ]
    own = {
        "`bounce`": mine.ping_pong,
        "`smooth`": mine.interpolate,
        "fit `whole`": mine.fit == "whole",
    }
    parts.extend(yours(name, bool(own[name])) for name in _extras(options))
    return " · ".join(parts)


def _extras(options: AnimateOptions) -> list[str]:
    """What was done to the picture and the frames beyond the model, as the settings line names
    it (only when asked for)."""
    chosen = {
        "fit `whole`": options.fit == "whole",
        "`bounce`": options.ping_pong,
        "`smooth`": options.interpolate,
    }
    return [name for name, on in chosen.items() if on]


# What a member hears about the line when it is not simply running (see bot/health.py).
_QUEUE_STATES = {
    "starting": "⏳ I'm still starting: clips wait in line and start once the model is loaded.",
    "loading": "⏳ I'm still loading the model: clips wait in line and start once it's ready.",
    "load_failed": (
        "⚠️ The model failed to load when I started; each clip tries again, and one that "
        "fails is not charged. The host has been told in my log."
    ),
    "stuck": (
        "⚠️ The GPU stopped responding and I'm restarting; clips in line are kept and made "
        "after the restart."
    ),
    "failed": "⚠️ My GPU worker stopped after an error; clips in line wait for a restart.",
    "stopping": "⏸️ I'm restarting; clips in line are kept and made after the restart.",
    "stopped": "⏸️ I'm restarting; clips in line are kept and made after the restart.",
    "no_workers": "⚠️ No GPU worker is connected right now; clips wait until one is back.",
}


# The bot's status in the member list, by queue state when it is not simply running.
_PRESENCE_STATES = {
    "starting": "⏳ Starting up · /help",
    "loading": "⏳ Loading the model · /help",
    "load_failed": "⚠️ The model failed to load · /help",
    "stuck": "⚠️ Restarting the GPU · /help",
    "failed": "⚠️ GPU worker stopped · /help",
    "stopping": "⏸️ Restarting · /help",
    "stopped": "⏸️ Restarting · /help",
    "no_workers": "⚠️ No GPU worker connected · /help",
}


def presence_text(snapshot: QueueSnapshot, *, disk_full: bool = False) -> str:
    """The custom status members see beside the bot (Discord shows 128 characters at most)."""
    if disk_full:
        return "⚠️ Paused: the server's disk is full · /help"
    state = _PRESENCE_STATES.get(snapshot.state)
    if state is not None:
        return state
    waiting, making = len(snapshot.waiting), len(snapshot.running)
    if not waiting and not making:
        return "🎬 Ready: /animate a picture · /help"
    if not waiting:
        making_what = "a clip" if making == 1 else f"{making} clips"
        return f"🎬 Making {making_what} · /animate · /help"
    return f"🎬 {waiting} clip{'s' if waiting != 1 else ''} in line · /animate · /help"


# Pillow's format names as members know them (HEIF: the iPhone's HEIC photos).
_FORMAT_NAMES = {"WEBP": "WebP", "HEIF": "HEIC"}


def help_text(overview: Overview) -> str:
    """`/help`: how to make a clip, and what this server gives the member now."""
    limits = overview.image_limits
    mebibytes = limits.max_bytes / 2**20
    megapixels = limits.max_pixels / 1_000_000
    names = [_FORMAT_NAMES.get(f, f) for f in overview.image_formats]
    formats = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
    waiting, making = len(overview.snapshot.waiting), len(overview.snapshot.running)
    line = f"{waiting} clip{'s' if waiting != 1 else ''} waiting"
    line += "." if not making else ", one being made." if making == 1 else f", {making} being made."
    state = _QUEUE_STATES.get(overview.snapshot.state)
    if overview.snapshot.waiting and state is None:
        # Only while clips are being made: otherwise the line below says why they wait.
        last = overview.snapshot.waiting[-1]
        line += f" The last in line starts in {duration(last.eta_seconds)}."
    lines = [
        "🎬 **Making a clip**",
        f"• `/animate image:` with a picture ({formats}, up to {mebibytes:g} MiB and "
        f"{megapixels:g} megapixels), or Apps → **Animate** on a message of yours with one.",
        "• How much it moves: `preset:` subtle, normal or dramatic, or `motion:` 0 (still) to "
        "255 (wild). `format:gif` loops everywhere, and with `bounce:True` without a jump "
        "(forwards, then backwards); `smooth:True` doubles the frames; `fit:whole` keeps a "
        "picture of another shape whole rather than cropped; `quality:draft` is faster; the "
        "same `seed:` gives the same clip.",
        "• Under each clip: **Re-roll** (new seed), **More motion**, **Less motion**, **Delete**.",
        "",
        "📋 **Here, now**",
        "• " + quota_text(overview.quota),
        f"• With nothing typed, a clip gets: {_clip_settings(overview.options, overview.defaults)}"
        f" (at most `{overview.max_steps}` steps here). `/defaults` sets your own.",
        "• " + line,
    ]
    if state is not None:
        lines.append("• " + state)
    if overview.disk_full:
        lines.append(
            "• ⚠️ New clips are paused: the bot's server is out of disk space (the host has "
            "been told in my log). Clips already in line are still made."
        )
    lines += [
        "• A clip is charged only once it is posted: one that fails or is cancelled costs nothing.",
        "",
        "🧭 **Commands**: `/queue` (your place in line) · `/history` (your latest clips) · "
        "`/cancel` · `/quota` · `/defaults`",
    ]
    if overview.is_moderator:
        lines.append(
            "🛡️ **Moderators**: `/quota-admin` `set`, `role`, `default` (limits) · `reset` "
            "(give clips back) · `show` (a member) · `queue` · `usage` · `log` · `config` "
            "(step cap, default format, moderator role)"
        )
    return truncate("\n".join(lines))


USAGE_SPANS = {1: "the last 24 hours", 7: "the last 7 days", 30: "the last 30 days"}


def usage_text(usage: GuildUsage, days: int, *, kept_days: int | None = None) -> str:
    """A server's usage for its moderators: how clips ended, typical times, who made most.
    `kept_days`: how long the host keeps clips' records, when shorter than the span asked."""
    span = USAGE_SPANS.get(days, f"the last {days} days")
    if kept_days is not None and kept_days < days:
        span += f" (the bot keeps {kept_days} days of records)"
    if usage.asked == 0:
        return f"📊 No clips were asked for here in {span}."
    members = f"{usage.members} member{'s' if usage.members != 1 else ''}"
    posted = "clip" if usage.posted == 1 else "clips"
    text = f"📊 In {span}: **{usage.posted}** {posted} posted"
    text += f" for {members}" if usage.posted else ""
    others = [
        f"{usage.failed} failed (refunded)" if usage.failed else "",
        f"{usage.cancelled} cancelled" if usage.cancelled else "",
        f"{usage.pending} waiting, being made or being posted" if usage.pending else "",
    ]
    text += "".join(f"; {part}" for part in others if part) + "."
    if usage.wait_seconds is not None and usage.make_seconds is not None:
        text += (
            f"\nTypical wait {duration(usage.wait_seconds).removeprefix('about ')}, "
            f"making {duration(usage.make_seconds).removeprefix('about ')} (medians)."
        )
    if usage.top:
        ranked = " · ".join(f"{mention(user)} {count}" for user, count in usage.top)
        text += f"\nMost clips: {ranked}"
    return text


MODERATOR_ROLE_HINT = (
    "\nℹ️ Discord shows `/quota-admin` only to members with Manage Server until you allow the "
    "role too: Server Settings → Integrations → this bot → `/quota-admin` → add the role."
)

CANNOT_POST_HERE = (
    "I can't post in this channel myself (I need Send Messages and Attach Files here), so a "
    "clip that takes longer than 14 minutes comes to you by DM, if you accept DMs from server "
    "members; `/queue` also fetches it."
)


def accepted_text(
    position: int | None, eta: float | None, quota: QuotaStatus, *, on_hold: bool = False
) -> str:
    where = "next in line" if not position or position <= 1 else f"number {position} in the queue"
    if on_hold:
        text = (
            f"👍 Got it! Your clip is {where}, but no GPU worker is connected right now: it "
            "starts as soon as one is back."
        )
    else:
        text = f"👍 Got it! Your clip is {where}; it should start in {duration(eta)}."
    if quota.limit is not None and quota.remaining is not None:
        text += (
            f" You have {quota.remaining} of {clips(quota.limit)} left "
            f"({counts_for(quota.period)})."
        )
    return text


def queue_text(jobs: Sequence[JobRecord], snapshot: QueueSnapshot) -> str:
    lines = [f"• {_job_line(job, snapshot)}" for job in jobs]
    total = len(snapshot.waiting)
    head = f"📋 {total} clip{'s' if total != 1 else ''} waiting in total"
    making = len(snapshot.running)
    head += "." if not making else ", one being made." if making == 1 else f", {making} being made."
    if snapshot.state == "no_workers":
        head += "\n⚠️ No GPU worker is connected right now; clips wait until one is back."
    if not lines:
        return head + "\nYou have no clips waiting. Use `/animate` to make one."
    return head + "\nYour clips:\n" + "\n".join(lines)


def _job_line(job: JobRecord, snapshot: QueueSnapshot) -> str:
    waiting = {w.job_id: w for w in snapshot.waiting}
    running = {r.job_id: r for r in snapshot.running}
    short = _clip_link(job)
    if job.job_id in running:
        r = running[job.job_id]
        step = f" (step {r.step}/{r.total})" if r.total else ""
        return f"{short} is being made now{step}"
    if job.job_id in waiting:
        w = waiting[job.job_id]
        return f"{short} is at position {w.position}, starting in {duration(w.eta_seconds)}"
    if job.state is JobState.DONE:
        return f"{short} is finished: posting it now"
    return f"{short} is {job.state.value}"


# The moderators' list stops here at most (fewer when their lines, with links, are long).
GUILD_QUEUE_SHOWN = 15


def guild_queue_text(jobs: Sequence[JobRecord], snapshot: QueueSnapshot) -> str:
    """A server's clips in the line, for its moderators: whose, and where each one is."""
    total = len(snapshot.waiting)
    head = f"📋 {len(jobs)} clip{'s' if len(jobs) != 1 else ''} of this server's in the line"
    head += f" ({total} waiting in all, every server counted)."
    if not jobs:
        return head + "\nNothing of this server's is waiting or being made."
    # In the order they will be made: being made first, then by place in line.
    place = {r.job_id: 0 for r in snapshot.running}
    place.update({w.job_id: w.position for w in snapshot.waiting})
    ordered = sorted(jobs, key=lambda job: place.get(job.job_id, len(place) + 1))
    lines = [f"• {mention(job.user_id)}: {_job_line(job, snapshot)}" for job in ordered]
    return _as_many_as_fit(
        [head],
        lines,
        lambda left: f"…and {left} more.",
        tail="Each clip's progress message has its Cancel button.",
        most=GUILD_QUEUE_SHOWN,
    )


def _as_many_as_fit(
    head: list[str],
    lines: Sequence[str],
    more: Callable[[int], str],
    *,
    tail: str | None = None,
    most: int | None = None,
) -> str:
    """`head`, then as many of `lines` (up to `most`) as fit in a message with `tail`, and
    `more(n)` for the n left out: cut whole lines, never in the middle of a link."""
    end = [tail] if tail is not None else []
    whole = "\n".join([*head, *lines, *end])
    if (most is None or len(lines) <= most) and len(whole) <= MAX_CONTENT:
        return whole
    # Cut: room for the "…and N more" line too (N at its largest, for its length).
    room = MAX_CONTENT - len("\n".join([*head, more(len(lines)), *end]))
    shown: list[str] = []
    for line in lines[:most]:
        room -= len(line) + 1
        if room < 0:
            break
        shown.append(line)
    return "\n".join([*head, *shown, more(len(lines) - len(shown)), *end])


def history_text(jobs: Sequence[JobRecord]) -> str:
    """The member's latest clips here, newest first: when, how it ended, a link to each posted
    one, and the settings that reproduce it."""
    if not jobs:
        return "🕘 You have made no clips here yet. Use `/animate` or Apps → **Animate**."
    lines = ["🕘 Your latest clips here, newest first:"]
    for job in jobs:
        when = discord_timestamp(job.created_at) if job.created_at else "?"
        options = job.options
        settings = f"motion `{options.get('motion_bucket_id', 127)}`"
        if job.seed is not None:
            settings += f" · seed `{job.seed}`"
        if job.state is JobState.DELIVERED:
            if job.clip_url is not None:
                outcome = f"[posted]({job.clip_url})"
            else:
                outcome = "posted (deleted since, or before the bot kept links)"
        elif job.state is JobState.FAILED:
            outcome = f"failed, not charged: {job.error or 'an error'}"
        elif job.state is JobState.CANCELLED:
            outcome = "cancelled, not charged"
        else:
            outcome = "in the line (see `/queue`)"
        lines.append(f"• {when} {outcome} · {settings}")
    return truncate("\n".join(lines))


def _clip_link(job: JobRecord) -> str:
    """The clip as /queue names it: a link to its progress message, where the member saw it."""
    if job.progress_message_id is None:
        return f"`{job.job_id[:8]}`"
    url = f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.progress_message_id}"
    return f"[`{job.job_id[:8]}`]({url})"


def truncate(text: str, limit: int = MAX_CONTENT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------- the moderators' log

_SETTING_NAMES = {
    "default_limit": "server default limit",
    "default_period": "server default period",
    "max_steps": "max steps",
    "default_format": "default format",
    "moderator_role_id": "moderator role",
}


def audit_text(entries: Sequence[AuditEntry]) -> str:
    """`/quota-admin log`: who changed what, newest first, one line each."""
    if not entries:
        return "📜 No moderator has changed a limit or setting on this server yet."
    lines = [
        f"{relative_time(entry.created_at)} <@{entry.actor_id}> {_audit_change(entry)}"
        for entry in entries
    ]
    # Said, so that a moderator looking for an older change knows the list was cut.
    return _as_many_as_fit(
        ["📜 Latest changes, newest first:"],
        lines,
        lambda left: f"…and {left} older, too long to show here.",
    )


def _audit_change(entry: AuditEntry) -> str:
    kind, _, target_id = entry.target.partition(":")
    who = f"<@{target_id}>" if kind == "user" else f"<@&{target_id}>"
    old, new = entry.old or {}, entry.new or {}
    match entry.action:
        case "quota.user.set":
            return f"set {who}'s limit: {_rule(entry.old)} → **{_rule(entry.new)}**"
        case "quota.user.clear":
            return f"removed {who}'s own limit ({_rule(entry.old)})"
        case "clip.cancel":
            return f"cancelled {who}'s clip"
        case "clip.delete":
            return f"deleted {who}'s clip"
        case "quota.user.reset":
            return f"reset {who}'s usage ({clips(int(old.get('used', 0)))} used → 0)"
        case "quota.default.clear":
            back = f"{_rule(entry.old)} → **{_rule(entry.new)}**"
            return f"put the server default back to the bot's ({back})"
        case "quota.role.set":
            return f"set the limit for {who}: {_rule(entry.old)} → **{_rule(entry.new)}**"
        case "quota.role.clear":
            return f"removed the limit for {who} ({_rule(entry.old)})"
        case "settings.update":
            changed = [
                f"{_SETTING_NAMES.get(name, name)} {_setting(name, old.get(name))} → "
                f"**{_setting(name, new.get(name))}**"
                for name in new
                if old.get(name) != new.get(name)
            ]
            return "changed " + (", ".join(changed) if changed else "nothing")
    return f"{entry.action} {entry.target}"


def _rule(value: object) -> str:
    if not isinstance(value, dict):
        return "not set"
    limit = value.get("limit")
    if limit is None:
        return "unlimited"
    if limit == 0:
        return "blocked"
    period = value.get("period")
    return clips(int(limit)) + (f" per {period}" if period else "")


def _setting(name: str, value: object) -> str:
    if name == "moderator_role_id":
        return f"<@&{value}>" if value else "none"
    if name == "default_limit" and value is None:
        return "unlimited"
    return str(value)
