"""Where the pipeline tells people what it is doing."""

from __future__ import annotations

import re

from prefect.blocks.core import Block
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from slack_sdk import WebClient

from blocks.validation import check_tls_url, reject_unknown_fields


class SlackChannel(Block):
    """A Slack channel reached with a bot token (chat.postMessage / chat.update)."""

    _block_type_name = "Slack Channel"
    _block_type_slug = "architect-slack-channel"
    _description = "Slack bot token and channel for deploy notifications; api_url points at Slack or a stand-in."

    bot_token: SecretStr = Field(description="Bot token (xoxb-...) with chat:write")
    channel: str = Field(description="Channel ID or name, e.g. #staging-deploys")
    api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://slack.com/api/"), description="Slack Web API base URL (ends with /api/)"
    )
    timeout_s: float = Field(
        3.0, gt=0, le=30, description="Per-call timeout: a slow Slack must never slow a deploy down much"
    )

    _validate_api_url = field_validator("api_url")(check_tls_url)  # the bot token travels on it
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not re.fullmatch(r"#[a-z0-9_-]{1,80}|[CGD][A-Z0-9]{8,20}", value):
            raise ValueError(f"{value!r} is not a channel name (#name) or ID (C0123ABCD)")
        return value

    def get_client(self) -> WebClient:
        # No retry handlers: a failed notification is logged and dropped, never waited on.
        return WebClient(
            token=self.bot_token.get_secret_value(),
            base_url=str(self.api_url),
            timeout=int(max(1, self.timeout_s)),
            retry_handlers=[],
        )
