"""The local platform and operator tools: the embedded stack and its supervisor, the
CLI, the demo, export and replay. It may import anything."""
