"""Kiln runtime: the train, serve and monitor entry points of the runtime image."""
