"""The webhook receiver: signed HTTP in, durable queue row out."""
