"""What operators' tools share: the `packline` CLI and the api's ops console (`/ops`)."""
