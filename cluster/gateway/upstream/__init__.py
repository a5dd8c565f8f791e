"""Talking to engines: the HTTP client of the engines' own OpenAI servers, the stats poller
that scrapes their /metrics for routing and flow control, the LoRA adapter loader."""
