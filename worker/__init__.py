"""The delivery worker: claims queued messages, submits them upstream, records the outcome."""
