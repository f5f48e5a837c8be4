"""The services the HTTP layer and the command line call: files, uploads, batches, keys and
maintenance. They take streams of chunks and return records; storage is below them."""
