"""The Batch API: batches of requests to an OpenAI-compatible upstream, run in the background.

`service.BatchService` is what the HTTP handlers call (create, retrieve, list, cancel);
`runner.BatchRunner` works through the batches (validate, send, finalize) under leases, so
any instance sharing the database can take over; `upstream` and `echo` are where requests go.
The state of every batch and request is in the metadata store (`storage.base.BatchMetadata`).
"""
