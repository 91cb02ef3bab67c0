"""Webhooks: signed deliveries of pack and image events to the users' endpoints
(docs/webhooks.md). Run by the notifier, in consumer groups of their own."""
