"""The entry of the generation routes (entry.py reads top to bottom as the path), request
validation, the OpenAI parameters accepted, request caps and tenant limits/quotas."""
