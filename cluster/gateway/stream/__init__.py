"""The answer on its way back: the stream relay, the reasoning strip, resume on another
replica when an engine dies mid-stream."""
