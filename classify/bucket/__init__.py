"""`classify-bucket`: classify every photo under a bucket prefix or in a local folder, in-process
and in batches, as one task of many (a Cloud Run job), writing the results layout of
`classify/results.py`."""
