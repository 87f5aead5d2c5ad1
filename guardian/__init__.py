# ssh-guardian: a session-aware guardian for sshd.
# The package root only names the version; everything else lives in its own module (see DESIGN.md).
__version__ = "0.1.0"
