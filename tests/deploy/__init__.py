"""Deployment: the systemd units, sysusers/tmpfiles entries, the installer and nginx."""
