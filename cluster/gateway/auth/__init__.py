"""Who is asking: hashed API keys and their reload, JWTs, the failed-auth throttle."""
