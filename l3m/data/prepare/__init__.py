"""Token shards: `l3m data prepare` tokenizes text and JSONL corpora once, in parallel, into binary
shards that `TokenShards` reads through memory maps.

`format` (the layout, shared with the reader), `plan` (files, job, units), `work` (one shard),
`run` (resume or refuse, workers, manifest), `progress`. Nothing is imported here, so that the
reader can use `format` without pulling in the writer.
"""
