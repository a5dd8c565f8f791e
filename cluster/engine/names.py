"""Names shared by the engine deployment and whoever scales it (no Ray import here)."""


def deployment_name(served_name: str) -> str:
    return "engine-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in served_name)
