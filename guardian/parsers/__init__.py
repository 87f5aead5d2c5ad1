# Parsers: pure functions from bytes or text to events (or None). No file descriptors, no clocks,
# no system calls: each is tested on its own with plain data, and a watcher only feeds it.
