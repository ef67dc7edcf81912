"""The HTTP edge: authenticate, admit, enqueue, and relay frames to clients."""
