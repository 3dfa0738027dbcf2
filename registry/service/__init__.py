"""The service layer: the command handlers (the one write path) and what they use in the same
transaction as the append (email and OAuth reservations, idempotency records, retries), the
master key set-up, the importer, and the operations behind the operator's commands."""
