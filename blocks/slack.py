"""Where the pipeline tells people what it is doing."""

from __future__ import annotations

from pydantic import AnyHttpUrl, Field, SecretStr
from prefect.blocks.core import Block
from slack_sdk import WebClient


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

    def get_client(self) -> WebClient:
        # No retry handlers: a failed notification is logged and dropped, never waited on.
        return WebClient(
            token=self.bot_token.get_secret_value(),
            base_url=str(self.api_url),
            timeout=int(max(1, self.timeout_s)),
            retry_handlers=[],
        )
