"""Anthropic's Messages API: a protocol front-end over the gateway's admission and forwarding."""
