"""MAIL_API shared core: everything the receiver, worker and panel have in common."""

__version__ = "0.1.0"
