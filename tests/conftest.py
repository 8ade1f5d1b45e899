import torch
from fixtures_clip import tiny_clip, tiny_clip_files  # noqa: F401
from fixtures_data import tiny_coco, tiny_voc  # noqa: F401
from fixtures_demo import demo_run  # noqa: F401

# The tests use tiny models: one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)
