"""Discord's checks on what a bot sends, where they are cheap to reproduce.

Each function returns a form-error tree (empty when the input is fine); the caller raises
`invalid_form_body`. Codes and messages are Discord's own, so a test can match on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.fakes.discord_errors import FormErrors, form_error
from tests.fakes.discord_models import FLAG_COMPONENTS_V2

SUBCOMMAND = 1
SUBCOMMAND_GROUP = 2
OPTION_TYPES = range(1, 12)
CHOICE_TYPES = {3, 4, 10}  # string, integer, number
CHAT_INPUT = 1
MAX_GLOBAL_CHAT_COMMANDS = 100

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_FILES = 10
MAX_ACTION_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
MAX_CUSTOM_ID = 100
MAX_LABEL = 80
EMBED_LIMITS = {"title": 256, "description": 4096}
MAX_EMBED_FIELDS = 25
MAX_EMBED_TOTAL = 6000


def _bad_length(low: int, high: int) -> FormErrors:
    return form_error("BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def _max_length(high: int) -> FormErrors:
    return form_error("BASE_TYPE_MAX_LENGTH", f"Must be {high} or fewer in length.")


def _valid_chat_name(name: object) -> bool:
    """Discord's `^[-_'\\p{L}\\p{N}\\p{sc=Deva}\\p{sc=Thai}]{1,32}$`, lower-case where it can be."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        return False
    return all(ch in "-_'" or ch.isalnum() for ch in name) and name == name.lower()


def _check_name(errors: FormErrors, data: dict[str, Any], *, chat: bool) -> None:
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        errors["name"] = _bad_length(1, 32)
    elif chat and not _valid_chat_name(name):
        errors["name"] = form_error("APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")


def _check_description(errors: FormErrors, data: dict[str, Any]) -> None:
    description = data.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        errors["description"] = _bad_length(1, 100)


def _check_choices(errors: FormErrors, option: dict[str, Any]) -> None:
    choices = option.get("choices")
    if not choices:
        return
    if option.get("type") not in CHOICE_TYPES:
        errors["choices"] = form_error(
            "APPLICATION_COMMAND_OPTION_CHOICES_INVALID_TYPE",
            "Choices are only allowed for string, integer and number options",
        )
    elif option.get("autocomplete"):
        errors["choices"] = form_error(
            "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
            "Autocomplete cannot be enabled on options that have choices",
        )
    elif len(choices) > 25:
        errors["choices"] = _max_length(25)
    else:
        choice_errors: FormErrors = {}
        for index, choice in enumerate(choices):
            name = choice.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 100:
                choice_errors[str(index)] = {"name": _bad_length(1, 100)}
            value = choice.get("value")
            if isinstance(value, str) and len(value) > 100:
                choice_errors.setdefault(str(index), {})["value"] = _bad_length(1, 100)
        if choice_errors:
            errors["choices"] = choice_errors


def _check_options(options: Sequence[dict[str, Any]], depth: int) -> FormErrors:
    """`depth` 0: a command's options; 1: inside a group or subcommand; 2: inside a group's
    subcommand. Subcommands and plain options never mix at one level."""
    if len(options) > 25:
        return {"options": _max_length(25)}
    errors: FormErrors = {}
    types = [o.get("type") for o in options]
    has_sub = any(t in (SUBCOMMAND, SUBCOMMAND_GROUP) for t in types)
    has_plain = any(t not in (SUBCOMMAND, SUBCOMMAND_GROUP) for t in types)
    if has_sub and has_plain:
        return {
            "options": form_error(
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                "Sub-command and sub-command group option types are mutually exclusive to all "
                "other types",
            )
        }
    names = [o.get("name") for o in options]
    if len(set(names)) != len(names):
        return {
            "options": form_error(
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option names must be unique"
            )
        }
    seen_optional = False
    for index, option in enumerate(options):
        option_errors: FormErrors = {}
        option_type = option.get("type")
        if option_type not in OPTION_TYPES:
            option_errors["type"] = form_error("BASE_TYPE_CHOICES", "Value must be one of 1..11.")
        _check_name(option_errors, option, chat=True)
        _check_description(option_errors, option)
        _check_choices(option_errors, option)
        if option_type == SUBCOMMAND_GROUP and depth > 0:
            option_errors["type"] = form_error(
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                "Sub-command groups can only be nested at the top level",
            )
        elif option_type == SUBCOMMAND and depth > 1:
            option_errors["type"] = form_error(
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                "Sub-commands can only be nested in sub-command groups",
            )
        elif option_type in (SUBCOMMAND, SUBCOMMAND_GROUP):
            nested = option.get("options") or []
            if option_type == SUBCOMMAND_GROUP and any(o.get("type") != SUBCOMMAND for o in nested):
                option_errors["options"] = form_error(
                    "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                    "Sub-command groups can only contain sub-commands",
                )
            else:
                option_errors.update(_check_options(nested, depth + 1))
        else:
            if option.get("required"):
                if seen_optional:
                    option_errors["required"] = form_error(
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            for key, limit in (("min_length", 6000), ("max_length", 6000)):
                value = option.get(key)
                if value is not None and not 0 <= value <= limit:
                    option_errors[key] = form_error(
                        "NUMBER_TYPE_MAX", f"int value should be less than or equal to {limit}."
                    )
        if option_errors:
            errors[str(index)] = option_errors
    return {"options": errors} if errors else {}


def validate_commands(commands: object, *, is_global: bool) -> FormErrors:
    """The checks Discord makes on a bulk overwrite (`PUT .../commands`)."""
    if not isinstance(commands, list):
        return form_error("BASE_TYPE_ARRAY", "Only iterables may be used in a ListType")
    errors: FormErrors = {}
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        command_errors: FormErrors = {}
        if not isinstance(command, dict):
            errors[str(index)] = form_error("DICT_TYPE_CONVERT", "Only dictionaries may be used")
            continue
        kind = command.get("type", CHAT_INPUT)
        chat = kind == CHAT_INPUT
        _check_name(command_errors, command, chat=chat)
        if chat:
            _check_description(command_errors, command)
            command_errors.update(_check_options(command.get("options") or [], 0))
        elif command.get("description"):
            command_errors["description"] = form_error(
                "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                "Context menu commands cannot have description",
            )
        key = (kind, command.get("name", ""))
        if key in seen:
            command_errors["name"] = form_error(
                "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique"
            )
        seen.add(key)
        if command_errors:
            errors[str(index)] = command_errors
    chat_count = sum(1 for c in commands if isinstance(c, dict) and c.get("type", 1) == 1)
    if not errors and chat_count > MAX_GLOBAL_CHAT_COMMANDS:
        errors["_errors"] = [
            {
                "code": "APPLICATION_COMMANDS_TOO_MANY",
                "message": "Maximum number of application commands reached "
                f"({MAX_GLOBAL_CHAT_COMMANDS})",
            }
        ]
    return errors


def _check_embed(embed: dict[str, Any]) -> FormErrors:
    errors: FormErrors = {}
    for key, limit in EMBED_LIMITS.items():
        value = embed.get(key)
        if isinstance(value, str) and len(value) > limit:
            errors[key] = _max_length(limit)
    fields = embed.get("fields") or []
    if len(fields) > MAX_EMBED_FIELDS:
        errors["fields"] = _max_length(MAX_EMBED_FIELDS)
    return errors


def _embed_size(embed: dict[str, Any]) -> int:
    size = len(embed.get("title") or "") + len(embed.get("description") or "")
    size += len((embed.get("footer") or {}).get("text") or "")
    size += len((embed.get("author") or {}).get("name") or "")
    for item in embed.get("fields") or []:
        size += len(item.get("name") or "") + len(item.get("value") or "")
    return size


def _check_button(button: dict[str, Any], custom_ids: list[str]) -> FormErrors:
    errors: FormErrors = {}
    style = button.get("style")
    label = button.get("label")
    if isinstance(label, str) and len(label) > MAX_LABEL:
        errors["label"] = _max_length(MAX_LABEL)
    if style == 5:  # link buttons carry a url, never a custom_id
        if not button.get("url"):
            errors["url"] = form_error("BUTTON_URL_REQUIRED", "A link button requires a url")
    elif style != 6:
        custom_id = button.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors["custom_id"] = form_error("BUTTON_CUSTOM_ID_REQUIRED", "A custom id is required")
        elif len(custom_id) > MAX_CUSTOM_ID:
            errors["custom_id"] = _max_length(MAX_CUSTOM_ID)
        else:
            custom_ids.append(custom_id)
    return errors


def _check_action_row(row: dict[str, Any], custom_ids: list[str]) -> FormErrors:
    if row.get("type") != 1:
        return {"type": form_error("UNION_TYPE_CHOICES", 'Value of field "type" must be 1.')}
    children = row.get("components") or []
    if not children:
        return {"components": _bad_length(1, 5)}
    if any(c.get("type") != 2 for c in children):
        # A select menu fills its row alone.
        if len(children) > 1:
            return {"components": _max_length(1)}
        select = children[0]
        custom_id = select.get("custom_id") or ""
        if not custom_id or len(custom_id) > MAX_CUSTOM_ID:
            return {"components": {"0": {"custom_id": _bad_length(1, MAX_CUSTOM_ID)}}}
        if len(select.get("options") or []) > 25:
            return {"components": {"0": {"options": _max_length(25)}}}
        custom_ids.append(custom_id)
        return {}
    if len(children) > MAX_BUTTONS_PER_ROW:
        return {"components": _max_length(MAX_BUTTONS_PER_ROW)}
    errors: FormErrors = {}
    for index, button in enumerate(children):
        button_errors = _check_button(button, custom_ids)
        if button_errors:
            errors[str(index)] = button_errors
    return {"components": errors} if errors else {}


def validate_message_body(body: dict[str, Any], file_count: int, *, flags: int = 0) -> FormErrors:
    """Checks on the fields a create or edit request sets (absent fields are not checked)."""
    errors: FormErrors = {}
    content = body.get("content")
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        errors["content"] = _max_length(MAX_CONTENT)
    embeds = body.get("embeds")
    if isinstance(embeds, list):
        if len(embeds) > MAX_EMBEDS:
            errors["embeds"] = _max_length(MAX_EMBEDS)
        else:
            embed_errors = {str(i): e for i, e in enumerate(map(_check_embed, embeds)) if e}
            if embed_errors:
                errors["embeds"] = embed_errors
            elif sum(map(_embed_size, embeds)) > MAX_EMBED_TOTAL:
                errors["embeds"] = form_error(
                    "BASE_TYPE_MAX_LENGTH", "Embed size exceeds maximum size of 6000"
                )
    attachments = body.get("attachments")
    if file_count > MAX_FILES or (isinstance(attachments, list) and len(attachments) > MAX_FILES):
        errors["attachments"] = _max_length(MAX_FILES)
    components = body.get("components")
    if isinstance(components, list) and not flags & FLAG_COMPONENTS_V2:
        component_errors = validate_components(components)
        if component_errors:
            errors["components"] = component_errors
    return errors


def validate_components(rows: list[dict[str, Any]]) -> FormErrors:
    """Classic layout: at most 5 action rows of at most 5 buttons or one select."""
    if len(rows) > MAX_ACTION_ROWS:
        return _max_length(MAX_ACTION_ROWS)
    errors: FormErrors = {}
    custom_ids: list[str] = []
    for index, row in enumerate(rows):
        row_errors = _check_action_row(row, custom_ids)
        if row_errors:
            errors[str(index)] = row_errors
    if not errors and len(set(custom_ids)) != len(custom_ids):
        return form_error(
            "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
        )
    return errors
