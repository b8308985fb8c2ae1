"""What two or more methods share, each piece in its own small file (losses are in
`selfsup/losses.py`; the contract they follow in `selfsup/protocol.py`):

- `teacher.EMATeacher`: a frozen copy of a chain of student modules that follows them by EMA,
  with its momentum schedule (MoCo v2/v3, BYOL, DINO).
- `queue.FeatureQueue`: a first-in-first-out queue of features, pushed with every rank's keys.
- `heads`: the MLP heads (`mlp`) and DINO's weight-normalised projection head (`DINOHead`).
- `decoder.MaskedDecoder`: the light transformer decoder of MAE and SplitMask.
- `tokenizers`: patch tokenizers (k-means, data patches, random vectors) for BEiT and SplitMask.
- `multicrop`: one backbone pass per crop resolution (DINO, SwAV, iBOT).
- `puzzle`: 3x3 jigsaw puzzles, their settings and the context-free head (jigsaw, damaged jigsaw).
"""
