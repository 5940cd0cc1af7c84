"""Fakes for tests. The fake Discord server lives in the `discord_*` modules; start at
`discord_server.FakeDiscordServer`, its fixtures in `fixtures`, and `discord_client` to run a
discord.py client or the bot process against it."""
