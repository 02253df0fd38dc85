-- One table of a sharded stage: the shards' rows in shard order ($files is in shard order), each shard's rows in
-- the order it wrote them, so the merge reads as the unsharded stage's table would.
SELECT * EXCLUDE (filename, file_row_number)
FROM read_parquet($files, filename = true, file_row_number = true)
ORDER BY list_position($files, filename), file_row_number
