"""Delivery: SMTP submission (and the development file backend), and the pure decisions about
what an outcome means for a message."""
