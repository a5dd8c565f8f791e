"""What a request leaves behind: metrics, traces, the access log, and the accounting that
settles all three once a request is over."""
