"""The gateway process at its edge: the HTTP server and its socket, connection bounds and
deadlines, the Ray Serve replica that runs the process, event-loop lag."""
