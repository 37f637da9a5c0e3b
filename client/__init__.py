"""`image-pipeline`: photos from disk through preprocess and classify, with progress and resume.

A client of the two services, not part of either Bento (they pack `common/` and their own code).
"""
