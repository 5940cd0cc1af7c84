"""/quota-admin: the moderators' commands. Every change is audit-logged by the store and
confirmed with the old and the new value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.interactions import TimelyReply, member_of, role_ids
from bot.service import Member
from storage.quota_rules import Period, QuotaRule, clips
from storage.quotas import RoleLimit

if TYPE_CHECKING:
    from bot.client import SvdBot

PeriodChoice = Literal["hour", "day", "week"]
# Entries `/quota-admin log` shows: what fits in one message.
AUDIT_SHOWN = 15
FormatChoice = Literal["mp4", "gif"]
USAGE_CHOICES = list(messages.USAGE_SPANS.items())


class LimitError(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.user_message = (
            f"`{text}` is not a limit. Use a whole number (0 blocks the member) or `unlimited`."
        )


class EveryoneRole(Exception):
    user_message = (
        "@everyone is every member: use `/quota-admin default` for the server-wide limit, "
        "or pick another role."
    )


class EveryoneModerator(Exception):
    user_message = (
        "@everyone would make every member a moderator, able to change anyone's limits and "
        "cancel anyone's clips. Pick a role only your moderators have."
    )


class ManageServerOnly(Exception):
    user_message = (
        "Only members with the Manage Server permission can choose the moderator role "
        "(otherwise a moderator could make anyone a moderator)."
    )


def _clears(text: str) -> bool:
    return text.strip().lower() in {"clear", "remove", "default"}


class NotModerator(Exception):
    user_message = (
        "Only moderators can do that: you need the Manage Server permission "
        "or this server's moderator role."
    )


def parse_limit(text: str) -> int | None:
    """'5' → 5, 'unlimited' → None; anything else is refused with a message saying what works."""
    cleaned = text.strip().lower()
    # Not "none": a moderator blocking a role with it would make it unlimited.
    if cleaned in {"unlimited", "∞", "inf"}:
        return None
    # isascii: str.isdigit also accepts '²', which int() refuses.
    if cleaned.isascii() and cleaned.isdigit() and int(cleaned) < 1_000_000:
        return int(cleaned)
    raise LimitError(text)


def describe(value: QuotaRule | RoleLimit | None, period: Period | None = None) -> str:
    """A limit as a moderator reads it: '5 clips per day', 'unlimited', 'blocked', 'not set'.
    A role limit has no period of its own: it counts over the server's (`period`)."""
    if value is None:
        return "not set"
    if isinstance(value, RoleLimit):
        value = QuotaRule(value.limit, period or "day")
        return value.describe() if period else value.describe().replace(" per day", "")
    return value.describe()


def _default_changed(old: QuotaRule, new: QuotaRule, note: str = "") -> str:
    text = f"✅ Server default: {describe(old)} → **{describe(new)}**{note}."
    if old.period != new.period:
        # Role limits count over the server's period: they changed too, at once.
        text += (
            f"\nRole limits now count per {new.period} too, and clips made in the last "
            f"{new.period} count toward them (and toward this default) from now on."
        )
    return text


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class QuotaAdmin(
    commands.GroupCog,
    group_name="quota-admin",
    group_description="Moderators: set how many clips members may make",
):
    def __init__(self, bot: SvdBot) -> None:
        self.bot = bot
        super().__init__()

    async def _moderator(self, interaction: discord.Interaction) -> Member:
        # default_member_permissions is only a default that server admins can change: check again.
        member = await member_of(interaction, self.bot.service)
        if not member.is_moderator:
            raise NotModerator()
        return member

    @app_commands.command(name="set", description="Set one member's limit")
    @app_commands.describe(
        user="The member",
        limit="A number (0 blocks), `unlimited`, or `clear` to follow their roles again",
        period="Per hour, day or week (if empty: the server's period now, kept from then on)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        # A User too: a member who left can be limited (or blocked) before they come back.
        user: discord.Member | discord.User,
        limit: str,
        period: PeriodChoice | None = None,
    ) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            quotas = self.bot.service.quotas
            if _clears(limit):
                old, new = await quotas.clear_user_limit(
                    mod.guild_id, user.id, actor_id=mod.user_id
                )
                after = f"**{describe(new)}** (their roles or the server default apply)"
            else:
                value = parse_limit(limit)
                if period is None:
                    period = (await self.bot.service.guild_settings(mod.guild_id)).default_period
                old, new = await quotas.set_user_limit(
                    mod.guild_id, user.id, value, period, actor_id=mod.user_id
                )
                after = f"**{describe(new)}**"
            await reply.send(
                f"✅ {user.mention}'s limit: {describe(old)} → {after}.",
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="reset", description="Give a member back the clips they used")
    @app_commands.describe(user="The member")
    async def reset(
        self, interaction: discord.Interaction, user: discord.Member | discord.User
    ) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            old, new = await self.bot.service.quotas.reset_user(
                mod.guild_id, user.id, actor_id=mod.user_id
            )
            await reply.send(
                f"✅ Reset {user.mention}'s usage: {old} → **{new}** clips used.",
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="role", description="Set the limit for everyone with a role")
    @app_commands.describe(
        role="The role",
        limit="A number (0 blocks, unless another role allows more), `unlimited` or `clear`",
    )
    async def role(self, interaction: discord.Interaction, role: discord.Role, limit: str) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            if role.is_default():
                raise EveryoneRole()
            if _clears(limit):
                old, new = await self.bot.service.quotas.clear_role_limit(
                    mod.guild_id, role.id, actor_id=mod.user_id
                )
            else:
                old, new = await self.bot.service.quotas.set_role_limit(
                    mod.guild_id, role.id, parse_limit(limit), actor_id=mod.user_id
                )
            period = (await self.bot.service.guild_settings(mod.guild_id)).default_period
            await reply.send(
                f"✅ Limit for {role.mention}: {describe(old, period)} → "
                f"**{describe(new, period)}** (the server's period). Members get the most "
                "generous limit among their roles.",
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="default", description="Set the server's default limit")
    @app_commands.describe(
        limit="A number (0: none without a role or own limit), `unlimited`, or `clear` for the "
        "bot's default",
        period="Per hour, day or week (role limits follow it)",
    )
    async def default(
        self, interaction: discord.Interaction, limit: str, period: PeriodChoice | None = None
    ) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            if _clears(limit):
                text = await self._clear_default(mod)
                if period is not None:
                    text += f"\n(`period:{period}` was not used: the bot's default has its own.)"
                await reply.send(text)
                return
            if period is None:
                period = (await self.bot.service.guild_settings(mod.guild_id)).default_period
            old, new = await self.bot.service.quotas.set_default(
                mod.guild_id, parse_limit(limit), period, actor_id=mod.user_id
            )
            await reply.send(_default_changed(old, new))

    async def _clear_default(self, mod: Member) -> str:
        old, host = await self.bot.service.quotas.clear_default(mod.guild_id, actor_id=mod.user_id)
        if old is None:
            return (
                f"The server already follows the bot's default: **{describe(host)}**. "
                "Set one of its own with a number or `unlimited`."
            )
        return _default_changed(old, host, " (the bot's default)")

    @app_commands.command(name="show", description="Show a member's limit and usage")
    @app_commands.describe(user="The member")
    async def show(
        self, interaction: discord.Interaction, user: discord.Member | discord.User
    ) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            # One who left has no roles here: their own limit or the server default applies.
            roles = role_ids(user) if isinstance(user, discord.Member) else ()
            status = await self.bot.service.quotas.status(mod.guild_id, user.id, roles)
            source = {
                "user": "their own limit",
                "role": "one of their roles",
                "guild": "the server default",
            }
            text = messages.quota_text(status, subject=user.mention)
            where = source.get(status.source, status.source)
            if status.source == "role":
                # Which one: the moderator may want to change that role's limit, not the member's.
                limits = await self.bot.service.quotas.role_limits(mod.guild_id)
                deciding = [
                    r.role_id for r in limits if r.role_id in roles and r.limit == status.limit
                ]
                if deciding:
                    # A handful: scores of equal roles would pass Discord's 2000 characters.
                    named = ", ".join(f"<@&{role_id}>" for role_id in deciding[:5])
                    more = f" and {len(deciding) - 5} more" if len(deciding) > 5 else ""
                    where = ("their role " if len(deciding) == 1 else "their roles ") + named + more
            text += f"\nThe limit comes from {where}; {clips(status.used)} used."
            await reply.send(text, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="log", description="The latest changes moderators made here")
    async def log(self, interaction: discord.Interaction) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            entries = await self.bot.service.quotas.audit_log(mod.guild_id, limit=AUDIT_SHOWN)
            await reply.send(
                messages.audit_text(entries),
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="queue", description="Every clip of this server's in the line")
    async def queue(self, interaction: discord.Interaction) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            jobs, snapshot = await self.bot.service.guild_jobs(mod.guild_id)
            await reply.send(
                messages.guild_queue_text(jobs, snapshot),
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="usage", description="What members made here lately, and who most")
    @app_commands.describe(days="How far back (7 days by default)")
    @app_commands.choices(
        days=[app_commands.Choice(name=span, value=days) for days, span in USAGE_CHOICES]
    )
    async def usage(self, interaction: discord.Interaction, days: int = 7) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            usage = await self.bot.service.usage(mod.guild_id, days)
            kept = self.bot.service.history_days
            await reply.send(
                messages.usage_text(usage, days, kept_days=kept),
                allowed_mentions=discord.AllowedMentions.none(),
            )

    @app_commands.command(name="config", description="Server settings: steps, format, moderators")
    @app_commands.describe(
        max_steps="Most denoising steps a member may ask for (1-50)",
        format="Default format when a member does not pick one",
        moderator_role="A role whose members may use /quota-admin (Manage Server only)",
        clear_moderator_role="True: no moderator role any more (Manage Server only)",
    )
    async def config(
        self,
        interaction: discord.Interaction,
        max_steps: app_commands.Range[int, 1, 50] | None = None,
        format: FormatChoice | None = None,
        moderator_role: discord.Role | None = None,
        clear_moderator_role: bool = False,
    ) -> None:
        async with TimelyReply(interaction) as reply:
            mod = await self._moderator(interaction)
            changes: dict[str, object] = {}
            if max_steps is not None:
                changes["max_steps"] = max_steps
            if format is not None:
                changes["default_format"] = format
            if moderator_role is not None or clear_moderator_role:
                if not interaction.permissions.manage_guild:
                    raise ManageServerOnly()
                if moderator_role is not None and moderator_role.is_default():
                    raise EveryoneModerator()
                role_id = (
                    None if clear_moderator_role or moderator_role is None else moderator_role.id
                )
                changes["moderator_role_id"] = role_id
            if changes:
                old, new = await self.bot.service.guilds.update(
                    mod.guild_id, mod.user_id, **changes
                )
            else:
                old = new = await self.bot.service.guild_settings(mod.guild_id)

            def named(role_id: int | None) -> str:
                return f"<@&{role_id}>" if role_id else "none"

            text = (
                f"⚙️ Max steps **{new.max_steps}** (was {old.max_steps}) · default format "
                f"**{new.default_format}** (was {old.default_format}) · moderator role "
                f"{named(new.moderator_role_id)} (was {named(old.moderator_role_id)})."
            )
            if "moderator_role_id" in changes and new.moderator_role_id:
                # Discord hides /quota-admin from members without Manage Server until an admin
                # allows the role in the command's permissions; the bot cannot do that itself.
                text += messages.MODERATOR_ROLE_HINT
            await reply.send(
                text,
                allowed_mentions=discord.AllowedMentions.none(),
            )
