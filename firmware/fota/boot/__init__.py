"""Boot state: the store, otadata, the pending record, and the confirm/rollback flow."""
