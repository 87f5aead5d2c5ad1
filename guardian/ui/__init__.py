# Views of a StatusSnapshot: rich renderables for `guardian status`, plain text and JSON for
# `guardian grants/sessions/bans`, and the sub-commands that fetch a snapshot and print it.
# Rendering is a pure function of a snapshot (DESIGN.md principle 7): nothing here computes state.
