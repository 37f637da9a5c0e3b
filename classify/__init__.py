"""Classify: MobileNetV2 behind one `Classifier` (model.py), served by `service.py` at the root,
fed by storage events (events.py) and by `classify-bucket` (bucket/)."""
